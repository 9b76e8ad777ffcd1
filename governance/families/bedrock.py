"""AWS Bedrock: not metered yet (and its requests are SigV4-signed), so only its error envelope."""

from __future__ import annotations

import json

from governance.families import shapes
from governance.families.envelope import refusal_details, refusal_headers
from governance.types import Refusal

NAME = ENVELOPE = "bedrock"


def render_error(refusal: Refusal, request_id: str) -> tuple[int, dict[str, str], bytes]:
    """The refusal as Bedrock sends errors: `{"message": ...}` plus `x-amzn-ErrorType`."""
    shape = shapes.shape(ENVELOPE, refusal.kind)
    headers = refusal_headers(refusal)
    headers["x-amzn-errortype"] = shape.type
    headers["x-amzn-requestid"] = request_id
    body = {"message": refusal.message, "__type": shape.type, "spendfuse": refusal_details(refusal)}
    return shape.status, headers, json.dumps(body).encode()
