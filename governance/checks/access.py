"""A key's own state and access rules: active, not expired, and the models and providers it may
use. Unknown model names fail closed: an allow-list admits only what it names."""

from __future__ import annotations

from datetime import datetime

from governance.limits import Key
from governance.matching import model_matches
from governance.types import Refusal, RefusalKind

KEY_RULE = "key_state"
ACCESS_RULE = "model_access"


def key_state_refusal(key: Key, now: datetime) -> Refusal | None:
    """Refuse an inactive or expired key (the API's own authentication error)."""
    if not key.active:
        why = "is inactive"
    elif key.expires_at is not None and now >= key.expires_at:
        why = f"expired at {key.expires_at.isoformat()}"
    else:
        return None
    return Refusal(
        rule=f"{KEY_RULE}@key={key.id}",
        code="key_inactive" if not key.active else "key_expired",
        kind=RefusalKind.AUTH,
        message=f"spendfuse: key '{key.id}' {why}; ask the operator for an active key.",
    )


def access_refusal(key: Key, provider: str, model: str) -> Refusal | None:
    """Refuse a model or provider the key may not use. An empty allow-list allows nothing
    (Bifrost's empty list means everything; spendfuse does not copy that)."""
    allowed, denied = key.allowed_models, key.denied_models
    for kp in key.providers:  # the key's own lists for this provider, when it has them
        if kp.provider == provider:
            allowed = allowed if kp.allowed_models is None else kp.allowed_models
            denied = [*denied, *kp.denied_models]
    if key.allowed_providers is not None and provider not in key.allowed_providers:
        what = f"provider '{provider}'"
    elif allowed is not None and not any(model_matches(p, model) for p in allowed):
        what = f"model '{model}'"
    elif any(model_matches(p, model) for p in denied):
        what = f"model '{model}' (denied)"
    else:
        return None
    # 400 invalid_request_error: every official client shows it and stops (a 403 makes Codex
    # retry; a 404 naming the model makes Claude Code switch models).
    return Refusal(
        rule=f"{ACCESS_RULE}@key={key.id}",
        code="model_not_allowed",
        kind=RefusalKind.INVALID,
        message=f"spendfuse: key '{key.id}' may not use {what}; the operator's rules allow it other models.",
    )
