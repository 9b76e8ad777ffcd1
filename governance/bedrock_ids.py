"""AWS Bedrock model ids: the model a Bedrock request names in its URL-encoded path, and the
name model tables know it by. Pure; the id grammar's word lists are data (`rules/bedrock.yaml`).

A path names a foundation model (`anthropic.claude-sonnet-4-5-20250929-v1:0`), a cross-region
inference profile (`us.` / `eu.` / `apac.` / `global.` ... before it) or an ARN. The ARN of a
foundation model or of a system-defined inference profile names its model id after the slash;
any other ARN (an application inference profile, provisioned throughput, a custom or imported
model) names no model at all, and is kept whole: it prices only where the rules price that ARN
(a price override keyed by it), and is refused otherwise.
"""

from __future__ import annotations

import functools
import re
from urllib.parse import unquote

from pydantic import BaseModel, ConfigDict

from governance.errors import RequestParseError

#: Bedrock's runtime actions, after the model id in the path.
ACTIONS = ("invoke", "invoke-with-response-stream", "converse", "converse-stream", "count-tokens")
_PATH = re.compile(r"/model/(?P<id>[^/?#]+)/(?P<action>[a-z-]+)/?(?:[?#]|$)")
# ARN resource types whose id is a model id that prices on its own.
_NAMED_RESOURCES = ("foundation-model", "inference-profile")
_ARN = re.compile(r"^arn:aws[a-z-]*:bedrock:[a-z0-9-]*:[0-9]*:(?P<type>[a-z-]+)/(?P<id>.+)$")


class BedrockIds(BaseModel):
    """`rules/bedrock.yaml`."""

    model_config = ConfigDict(extra="forbid")
    profile_prefixes: list[str]
    vendors: list[str]


@functools.cache
def _grammar() -> re.Pattern[str]:
    """The id grammar, from the shipped word lists. Raises PolicyError for a bad table."""
    from governance import RULES_DIR
    from governance.tables import load_table

    ids = load_table(RULES_DIR / "bedrock.yaml", BedrockIds, "Bedrock model id table")
    prefixes = "|".join(re.escape(p) for p in ids.profile_prefixes)
    vendors = "|".join(re.escape(v) for v in ids.vendors)
    return re.compile(
        rf"^(?:(?:{prefixes})\.)?(?P<vendor>{vendors})\.(?P<name>[^:]+?)(?:-v\d+)?(?::[0-9a-z]+)*$"
    )


def model_in_path(path: str) -> tuple[str, str]:
    """`(model id, action)` of a Bedrock runtime path as sent (`path` raw, with its query): the id
    percent-decoded once, as Bedrock decodes it, and an ARN's model read off it. Raises
    `RequestParseError` for a path that names none."""
    found = _PATH.search(path)
    if found is None or found.group("action") not in ACTIONS:
        raise RequestParseError(f"the path {path[:200]!r} names no Bedrock model (/model/{{modelId}}/...)")
    try:
        model = unquote(found.group("id"), errors="strict").strip()
    except UnicodeDecodeError:
        raise RequestParseError("the Bedrock model id in the path is not UTF-8") from None
    arn = _ARN.match(model)
    if arn is not None and arn.group("type") in _NAMED_RESOURCES:
        model = arn.group("id")
    if not model or "/" in model and arn is None:
        raise RequestParseError(f"the Bedrock model id {model[:200]!r} is not one")
    return model, found.group("action")


def parts(model: str) -> tuple[str, str] | None:
    """`(vendor, name)` of a Bedrock model id (`us.anthropic.claude-sonnet-4-5-20250929-v1:0` ->
    `("anthropic", "claude-sonnet-4-5-20250929")`), or None when `model` is not one."""
    found = _grammar().match(model.strip().lower())
    return (found.group("vendor"), found.group("name")) if found else None


def table_name(model: str) -> str | None:
    """The name model tables know a Bedrock model id by, or None when `model` is not one."""
    found = parts(model)
    return found[1] if found else None
