"""AWS Bedrock: not metered yet (and its requests are SigV4-signed), so only its error envelope."""

from __future__ import annotations

import json

from governance.types import Refusal, RefusalKind
from governance.wire.envelope import refusal_details, refusal_headers

# botocore does not retry AccessDeniedException or ValidationException.
_STATUS = {
    RefusalKind.QUOTA: (403, "AccessDeniedException"),
    RefusalKind.INVALID: (400, "ValidationException"),
    RefusalKind.FORBIDDEN: (403, "AccessDeniedException"),
    RefusalKind.UPGRADE: (426, "ValidationException"),
    RefusalKind.UNAVAILABLE: (503, "ServiceUnavailableException"),
    RefusalKind.RATE: (429, "ThrottlingException"),
    RefusalKind.AUTH: (403, "UnrecognizedClientException"),
    RefusalKind.PROXY_AUTH: (407, "AccessDeniedException"),
}


def render_error(refusal: Refusal, request_id: str) -> tuple[int, dict[str, str], bytes]:
    """The refusal as Bedrock sends errors: `{"message": ...}` plus `x-amzn-ErrorType`."""
    status, error_type = _STATUS[refusal.kind]
    headers = refusal_headers(refusal)
    headers["x-amzn-errortype"] = error_type
    headers["x-amzn-requestid"] = request_id
    body = {"message": refusal.message, "__type": error_type, "spendfuse": refusal_details(refusal)}
    return status, headers, json.dumps(body).encode()
