"""Google (Gemini API, Vertex, Code Assist): not metered yet, so an `ErrorEnvelope` only: its error
body and where its clients put their keys."""

from __future__ import annotations

import json

from governance.families import shapes
from governance.families.common import Auth
from governance.families.envelope import refusal_details, refusal_headers
from governance.types import Refusal, RefusalKind

NAME = ENVELOPE = "google"
#: An API key header, or an OAuth bearer token (Vertex, Code Assist).
API_KEY_HEADERS = ("x-goog-api-key", "authorization")
#: The Gemini API also takes a key in the `key` query parameter (never used by custody: a URL is logged).
API_KEY_QUERY = "key"
_AUTH = Auth("x-goog-api-key")


def auth(provider: str) -> Auth:
    """How a key is sent: `x-goog-api-key`."""
    return _AUTH


def render_error(refusal: Refusal, request_id: str) -> tuple[int, dict[str, str], bytes]:
    """The refusal as a `google.rpc.Status`: `{"error": {code, message, status, details}}`."""
    shape = shapes.of(ENVELOPE, refusal)
    body = {
        "error": {
            "code": shape.status,
            "message": refusal.message,
            "status": shape.type,
            "details": [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": refusal.code.upper(),
                    "domain": "spendfuse",
                    "metadata": {k: str(v) for k, v in refusal_details(refusal).items()},
                }
            ],
        }
    }
    if refusal.kind is RefusalKind.RATE:
        # Gemini CLI retries a 429 after RetryInfo's delay (terminal only past 300 s).
        body["error"]["details"].append(  # type: ignore[index]
            {
                "@type": "type.googleapis.com/google.rpc.RetryInfo",
                "retryDelay": f"{refusal.retry_after or 1}s",
            }
        )
    return shape.status, refusal_headers(refusal), json.dumps(body).encode()
