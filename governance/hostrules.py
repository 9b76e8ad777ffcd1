"""The host table's rules: `rules/hosts.yaml` (always loaded) and the operator's `hosts:`
entries, as pydantic models, and the `HostTable` built from them. The family and envelope names
they accept derive from the registry in `governance.families`."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, ValidationError, field_validator

from governance.families import ENVELOPES, FAMILIES
from governance.hosts import HostTable, build_table
from governance.routes import check_path
from governance.rulefile import RulesInvalid, read_yaml, validation_problems
from governance.rulemodels import PriceOverride, Strict
from governance.shape import UnknownHostsRules

#: A metered API family's name (`governance.families.FAMILIES`).
Family = Literal[tuple(FAMILIES)]  # type: ignore[valid-type]
#: An error envelope's name (`governance.families.ENVELOPES`).
Envelope = Literal[tuple(ENVELOPES)]  # type: ignore[valid-type]


def _base_paths(v: str | list[str]) -> str | list[str]:
    if isinstance(v, list):
        if not v:
            raise ValueError("names at least one path")
        return [check_path(p) for p in v]
    return check_path(v)


#: Path prefixes of an API on a host (`/v1`, or several, or with `{placeholders}`).
BasePaths = Annotated[str | list[str], AfterValidator(_base_paths)]


class MountRule(Strict):
    """Another API family served on the same host under its own base path (the Gemini API's
    OpenAI-compatible `/v1beta/openai`, Vertex's Anthropic publisher path)."""

    family: Family
    """The API family of requests under `base_path`."""
    base_path: BasePaths
    """Path prefix (or prefixes) of that API, before the family's routes; may hold `{placeholders}`."""
    envelope: Envelope | None = None
    """Whose error format its clients understand. Defaults to the family."""


class HostRule(Strict):
    """An LLM API host: shipped in `rules/hosts.yaml`, or added by the operator under `hosts:`
    (a self-hosted vLLM, an internal LiteLLM, a corporate gateway). Operator entries win."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    """Names the entry in refusals and logs."""
    match: Annotated[list[str], Field(min_length=1)]
    """Host names or IP literals, or globs where `*` stands for any characters (dots included)."""
    family: Family | None = None
    """The API family whose requests are metered on it. Null: known but not metered (refused)."""
    envelope: Envelope | None = None
    """Whose error format its clients understand. Defaults to the family, else openai."""
    provider: str | None = None
    """genai-prices provider id for pricing. Defaults to the family."""
    base_path: BasePaths = "/v1"
    """Path prefix of the API on this host, before the family's routes (`/v1/chat/completions`);
    a list for several, and `{name}` placeholders for parts that vary (`/v1/projects/{project}`)."""
    mounts: list[MountRule] = []
    """More API families served on this host, each under its own base path, tried first."""
    prices: dict[str, PriceOverride] = {}
    """Model prices on this host, USD per 1M tokens, by exact model then longest prefix. They win
    over the rules' `prices` and over genai-prices."""
    default_price: PriceOverride | None = None
    """Price of any model on this host that nothing else prices."""

    @field_validator("match")
    @classmethod
    def _patterns(cls, v: list[str]) -> list[str]:
        for pattern in v:
            if not pattern.strip() or pattern.strip("*. ") == "":
                raise ValueError(f"host pattern {pattern!r} would match every host")
        return [p.strip().lower() for p in v]


class FamilyRoutes(Strict):
    """One API family's routes after a host's base path: path -> API name (POST only)."""

    metered: dict[str, str]
    """Billable routes that spendfuse prices, reserves and settles."""
    free: dict[str, str] = {}
    """Routes the provider does not bill (token counting)."""

    @field_validator("metered", "free")
    @classmethod
    def _routes(cls, v: dict[str, str]) -> dict[str, str]:
        return {check_path(route): api for route, api in v.items()}


class HostsFile(Strict):
    """`rules/hosts.yaml`: the shipped table of LLM hosts and family routes."""

    families: dict[Family, FamilyRoutes]
    """Routes per API family."""
    hosts: list[HostRule]
    """Every LLM API host spendfuse knows."""
    unknown_hosts: UnknownHostsRules
    """What makes a request to a host missing from `hosts` LLM-shaped."""


def host_table(operator: list[HostRule] | tuple[HostRule, ...]) -> HostTable:
    """The shipped `rules/hosts.yaml` plus the operator's host entries, checked first."""
    from governance import RULES_DIR

    shipped = _shipped_hosts(RULES_DIR / "hosts.yaml")
    data = shipped.model_dump(exclude_none=True)
    operator_entries = [_host_entry(h) for h in operator]
    return build_table(
        {
            "families": data["families"],
            "hosts": [_host_entry(h) for h in shipped.hosts],
            "unknown_hosts": data["unknown_hosts"],
        },
        operator_entries,
    )


@functools.cache
def shipped_table() -> HostTable:
    """The table of `rules/hosts.yaml` alone, without any operator's entries."""
    return host_table(())


@functools.cache
def _shipped_hosts(path: Path) -> HostsFile:
    try:
        return HostsFile.model_validate(read_yaml(path, "host table"))
    except ValidationError as e:
        raise RulesInvalid(str(path), validation_problems(e)) from e


def _host_entry(rule: HostRule) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": rule.name,
        "match": rule.match,
        "family": rule.family,
        "base_path": rule.base_path,
    }
    if rule.mounts:
        entry["mounts"] = [m.model_dump(exclude_none=True) for m in rule.mounts]
    if rule.envelope is not None:
        entry["envelope"] = rule.envelope
    if rule.provider is not None:
        entry["provider"] = rule.provider
    if rule.prices or rule.default_price is not None:
        entry["settings"] = {"prices": rule.prices, "default_price": rule.default_price}
    return entry
