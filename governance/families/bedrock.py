"""AWS Bedrock: not metered yet (and its requests are SigV4-signed), so an `ErrorEnvelope` only:
its error body and where its clients put their keys."""

from __future__ import annotations

import json

from governance.families import shapes
from governance.families.envelope import refusal_details, refusal_headers
from governance.types import Refusal

NAME = ENVELOPE = "bedrock"
#: A Bedrock API key is a bearer token; a SigV4 signature is in the same header.
API_KEY_HEADERS = ("authorization",)


def auth(provider: str) -> None:
    """None: requests are SigV4-signed over their bytes, so a key cannot simply be put in."""
    return None


def render_error(refusal: Refusal, request_id: str) -> tuple[int, dict[str, str], bytes]:
    """The refusal as Bedrock sends errors: `{"message": ...}` plus `x-amzn-ErrorType`."""
    shape = shapes.of(ENVELOPE, refusal)
    headers = refusal_headers(refusal)
    headers["x-amzn-errortype"] = shape.type
    headers["x-amzn-requestid"] = request_id
    body = {"message": refusal.message, "__type": shape.type, "spendfuse": refusal_details(refusal)}
    return shape.status, headers, json.dumps(body).encode()
