"""Small readers shared by the request parsers of every API family."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from governance.errors import RequestParseError


def require_model(body: Mapping[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise RequestParseError("the request names no model (`model` must be a non-empty string)")
    return model.strip()


#: The largest count any provider accepts for a token cap or a choice count is far below this;
#: a larger value is refused as invalid rather than carried into arithmetic and the ledger.
MAX_COUNT = 2**31 - 1
#: JSON nested deeper than this is refused: no API body needs it, and it would exhaust the
#: interpreter's stack in the parser or the token walk.
MAX_JSON_DEPTH = 128


def optional_int(
    body: Mapping[str, Any], key: str, *, minimum: int = 0, maximum: int = MAX_COUNT
) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    # bool is an int in Python, but `"max_tokens": true` is not a number of tokens.
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        shown = repr(value) if len(repr(value)) < 40 else repr(value)[:37] + "..."
        raise RequestParseError(f"`{key}` must be an integer from {minimum} to {maximum}, not {shown}")
    return value


def _depth_exceeds(value: object, limit: int) -> bool:
    """Whether `value` nests containers deeper than `limit` (iterative: no recursion)."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        key = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise _DuplicateKey(f"the request body repeats the key {key!r}")
    return obj


def decode_json_body(raw: bytes) -> dict[str, Any]:
    """A request body as a JSON object. Raises `RequestParseError` for anything else, including
    JSON nested deeper than `MAX_JSON_DEPTH` and an object that repeats a key: parsers disagree
    on which copy wins, and the provider must not see a `max_tokens` or `model` that spendfuse
    did not price."""
    try:
        body = json.loads(raw, object_pairs_hook=_no_duplicates)
    except _DuplicateKey as e:
        raise RequestParseError(str(e)) from None
    except RecursionError:
        raise RequestParseError(f"the request body nests JSON deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as e:
        raise RequestParseError(f"the request body is not JSON: {e}") from e
    if not isinstance(body, dict):
        raise RequestParseError("the request body is not a JSON object")
    if _depth_exceeds(body, MAX_JSON_DEPTH):
        raise RequestParseError(f"the request body nests JSON deeper than {MAX_JSON_DEPTH} levels")
    return body


def encode_json_body(body: Mapping[str, Any]) -> bytes:
    """The bytes of a rewritten request body. Raises `RequestParseError` if it cannot be
    written (it was read from JSON, so only a bug makes that happen)."""
    try:
        return json.dumps(body, ensure_ascii=False).encode()
    except (TypeError, ValueError, RecursionError) as e:
        raise RequestParseError(f"the request body cannot be re-encoded: {e}") from e


def optional_bool(body: Mapping[str, Any], key: str) -> bool:
    value = body.get(key, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise RequestParseError(f"`{key}` must be true or false, not {value!r}")
    return value


def largest(*values: int | None) -> int | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None


def token_count(usage: Mapping[str, Any], *path: str) -> int:
    """A non-negative int at `path` inside a usage object; 0 when absent or null."""
    node: Any = usage
    for key in path:
        if not isinstance(node, Mapping):
            return 0
        node = node.get(key)
    if isinstance(node, bool) or not isinstance(node, int) or node < 0:
        return 0
    return node


def any_mapping(value: Any, test: Callable[[Mapping[str, Any]], bool]) -> bool:
    """Whether any JSON object nested anywhere in `value` passes `test` (iterative: no recursion)."""
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, Mapping):
            if test(node):
                return True
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return False


def counter_path(path: str, suffix: str) -> str:
    """The counter's path for a request to `path`: the request's route (no query, no trailing
    slash) with the counter's `suffix` after it (`/v1/messages` -> `/v1/messages/count_tokens`)."""
    return path.split("?", 1)[0].rstrip("/") + suffix


def counter_answer(field: str) -> Callable[[int, Any], int | None]:
    """A family's `read_counter_response` for a counter that answers `{field: N}`: the count of
    a 200 answer, or None for any other answer (the estimate then stands)."""

    def read(status: int, body: Any) -> int | None:
        if status != 200 or not isinstance(body, Mapping):
            return None
        counted = body.get(field)
        if isinstance(counted, bool) or not isinstance(counted, int) or counted < 0:
            return None
        return counted

    return read


#: OpenAI's and Anthropic's counters both answer `{"input_tokens": N}`.
counted_input_tokens = counter_answer("input_tokens")


@dataclass(frozen=True)
class Auth:
    """How a provider takes an API key: the header, and what goes before the key in it."""

    header: str
    prefix: str = ""

    def value(self, key: str) -> str:
        return self.prefix + key


BEARER = Auth("authorization", "Bearer ")


_SIGV4_KEY = re.compile(r"^AWS4-HMAC-SHA256 .*?Credential=([A-Za-z0-9]+)/")


def bearer_key(value: str) -> str:
    """The key in an API-key header (`Authorization: Bearer <key>` or the bare key). A SigV4
    signature names its key by its access key id: the signature changes on every request, the
    key it was made with does not."""
    if value.startswith("AWS4-HMAC-SHA256 ") and (sigv4 := _SIGV4_KEY.match(value)) is not None:
        return sigv4.group(1)
    return value.removeprefix("Bearer ").strip()


def header_list(values: Callable[[str], list[str]], name: str) -> list[str]:
    """The comma-separated items of every `name` header (`values` is a `get_all`)."""
    return [item for value in values(name) for item in value.split(",")]


CountRequest = Callable[[str, Mapping[str, Any]], "tuple[str, dict[str, Any]] | None"]


def counter_request_of(
    count_request: CountRequest,
) -> Callable[[str, str, Mapping[str, Any]], tuple[str, dict[str, Any]] | None]:
    """A family's `counter_request` from its `count_request`: the counter's path is the
    request's route with the counter's suffix after it."""

    def counter_request(api: str, path: str, body: Mapping[str, Any]) -> tuple[str, dict[str, Any]] | None:
        found = count_request(api, body)
        return None if found is None else (counter_path(path, found[0]), found[1])

    return counter_request


def json_object(text: str) -> Mapping[str, Any] | None:
    """`text` (an event's data) as a JSON object, or None when it is not one."""
    try:
        obj = json.loads(text)
    except ValueError:
        return None
    return obj if isinstance(obj, Mapping) else None


def adds_no_stream_events(api: str, sent: Mapping[str, Any], forwarded: Mapping[str, Any] | None) -> bool:
    """`ApiFamily.adds_stream_events` of a family whose preparation adds nothing to its streams."""
    return False


def no_added_event(api: str, event: object) -> bool:
    """`ApiFamily.added_event` of a family whose preparation adds nothing to its streams."""
    return False
