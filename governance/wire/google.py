"""Google (Gemini API, Vertex, Code Assist): not metered yet, so only its error envelope."""

from __future__ import annotations

import json

from governance.types import Refusal, RefusalKind
from governance.wire.envelope import refusal_details, refusal_headers

# Gemini CLI stops at once on 400 FAILED_PRECONDITION and 403 PERMISSION_DENIED, and retries
# a plain 429 RESOURCE_EXHAUSTED with backoff (providers.md §3.5).
_STATUS = {
    RefusalKind.QUOTA: (400, "FAILED_PRECONDITION"),
    RefusalKind.INVALID: (400, "INVALID_ARGUMENT"),
    RefusalKind.FORBIDDEN: (403, "PERMISSION_DENIED"),
    RefusalKind.UPGRADE: (426, "FAILED_PRECONDITION"),
    RefusalKind.UNAVAILABLE: (503, "UNAVAILABLE"),
    RefusalKind.RATE: (429, "RESOURCE_EXHAUSTED"),
    RefusalKind.AUTH: (401, "UNAUTHENTICATED"),
    RefusalKind.PROXY_AUTH: (407, "UNAUTHENTICATED"),
}


def render_error(refusal: Refusal, request_id: str) -> tuple[int, dict[str, str], bytes]:
    """The refusal as a `google.rpc.Status`: `{"error": {code, message, status, details}}`."""
    status, rpc_status = _STATUS[refusal.kind]
    body = {
        "error": {
            "code": status,
            "message": refusal.message,
            "status": rpc_status,
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
    return status, refusal_headers(refusal), json.dumps(body).encode()
