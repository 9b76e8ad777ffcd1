"""A small test-side AWS Signature Version 4 signer and verifier (written from AWS's published
description of the algorithm): the client signs, the fake Bedrock verifies against the request
exactly as it arrived, so any change on the way (body, path, a signed header) fails as it would
on AWS, with 403 InvalidSignatureException."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from datetime import UTC, datetime
from urllib.parse import quote

ALGORITHM = "AWS4-HMAC-SHA256"
ACCESS_KEY = "AKIDEXAMPLETESTONLY"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def _canonical_query(query: str) -> str:
    pairs = [p.partition("=") for p in query.split("&") if p]
    return "&".join(f"{k}={v}" for k, _, v in sorted(pairs))


def _canonical_request(
    method: str, raw_path: str, headers: Mapping[str, str], signed: list[str], body: bytes
) -> str:
    path, _, query = raw_path.partition("?")
    # Services other than S3 encode the (already encoded) path once more.
    uri = quote(path, safe="/~")
    canonical_headers = "".join(f"{h}:{' '.join(headers[h].split())}\n" for h in signed)
    return "\n".join(
        [
            method,
            uri,
            _canonical_query(query),
            canonical_headers,
            ";".join(signed),
            hashlib.sha256(body).hexdigest(),
        ]
    )


def _signature(secret: str, stamp: str, scope: str, canonical: str) -> str:
    date, region, service, _ = scope.split("/")
    to_sign = "\n".join([ALGORITHM, stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = _hmac(_hmac(_hmac(_hmac(("AWS4" + secret).encode(), date), region), service), "aws4_request")
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


def sign(
    method: str,
    host: str,
    raw_path: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    region: str = "us-east-1",
    now: datetime | None = None,
) -> dict[str, str]:
    """`headers` plus the SigV4 ones (`x-amz-date`, `x-amz-content-sha256`, `authorization`),
    every header given signed along with `host`."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    out = {k.lower(): v for k, v in headers.items()}
    out.update({"host": host, "x-amz-date": stamp, "x-amz-content-sha256": hashlib.sha256(body).hexdigest()})
    signed = sorted(out)
    scope = f"{stamp[:8]}/{region}/bedrock/aws4_request"
    signature = _signature(SECRET_KEY, stamp, scope, _canonical_request(method, raw_path, out, signed, body))
    credential = f"Credential={ACCESS_KEY}/{scope}"
    out["authorization"] = (
        f"{ALGORITHM} {credential}, SignedHeaders={';'.join(signed)}, Signature={signature}"
    )
    return out


def verify(method: str, raw_path: str, headers: Mapping[str, str], body: bytes) -> str | None:
    """None when the request's signature holds over what arrived; else why not."""
    auth = headers.get("authorization", "")
    if not auth.startswith(ALGORITHM + " "):
        return "no SigV4 authorization"
    fields = dict(part.strip().partition("=")[::2] for part in auth[len(ALGORITHM) + 1 :].split(","))
    access, _, scope = fields.get("Credential", "").partition("/")
    signed = fields.get("SignedHeaders", "").split(";")
    if access != ACCESS_KEY or any(h not in headers for h in signed):
        return "unknown key or a signed header missing"
    if headers.get("x-amz-content-sha256") != hashlib.sha256(body).hexdigest():
        return "the body's hash does not match x-amz-content-sha256"
    canonical = _canonical_request(method, raw_path, headers, signed, body)
    expected = _signature(SECRET_KEY, headers.get("x-amz-date", ""), scope, canonical)
    return None if hmac.compare_digest(expected, fields.get("Signature", "")) else "signature does not match"
