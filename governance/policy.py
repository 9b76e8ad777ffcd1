"""The operator's rules: loading a rules file (strict YAML, version 1 read as version 2, model
tables named relative to it), overrides and the JSON schema. Unknown keys are errors, so a
misspelled limit can never be silently ignored.

The models are in `governance.rulemodels`, `governance.hostrules` and `governance.policymodel`,
the cross-reference checks in `governance.crossref`, YAML reading in `governance.rulefile`;
their public names stay importable from here.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from governance.crossref import reference_problems
from governance.errors import PolicyError
from governance.hostrules import Envelope, Family, FamilyRoutes, HostRule, HostsFile, host_table
from governance.limits import BudgetRule
from governance.policymodel import Policy
from governance.rulefile import Problem, RulesInvalid, parse_yaml, read_yaml, validation_problems
from governance.rulemodels import (
    ClampOutput,
    Egress,
    EgressAllow,
    Estimate,
    ImageFormula,
    LedgerSettings,
    LegacyBudget,
    NonNegativeUSD,
    PerMillionUSD,
    PriceOverride,
    UnmeteredAllowance,
)

__all__ = [
    "ClampOutput",
    "Egress",
    "EgressAllow",
    "Envelope",
    "Estimate",
    "Family",
    "FamilyRoutes",
    "HostRule",
    "HostsFile",
    "ImageFormula",
    "LedgerSettings",
    "LegacyBudget",
    "NonNegativeUSD",
    "PerMillionUSD",
    "Policy",
    "PriceOverride",
    "Problem",
    "RulesInvalid",
    "UnmeteredAllowance",
    "host_table",
    "json_schema",
    "load",
    "parse",
    "parse_yaml",
    "reference_problems",
    "require_limits",
    "with_overrides",
]


def _load_table(value: Any, base: Path, key: str) -> Any:
    if not isinstance(value, str):
        return value
    data = read_yaml(base / value, f"{key} table")
    if not isinstance(data, dict):
        raise PolicyError(f"{key} table {str(base / value)!r} must be a mapping of model to value")
    return data


# Keys that only version 2 understands: in a version 1 file they would be silently dropped.
_V2_KEYS = ("rate_limits", "global", "providers", "models", "customers", "teams", "keys", "require_key")


def _from_version_1(data: dict[str, Any]) -> tuple[dict[str, Any], list[Problem]]:
    """A version 1 file as version 2: each budget becomes one of the same id on `global`."""
    problems = [
        Problem((key,), f"`{key}` needs `version: 2` (this file is version 1)")
        for key in _V2_KEYS
        if key in data
    ]
    raw = data.get("budgets", [])
    if not isinstance(raw, list):
        return data, [*problems, Problem(("budgets",), "must be a list")]
    budgets = []
    for i, item in enumerate(raw):
        try:
            legacy = LegacyBudget.model_validate(item)
        except ValidationError as e:
            problems += [Problem(("budgets", i, *p.loc), p.message) for p in validation_problems(e)]
            continue
        budgets.append({"id": legacy.name, "max_usd": legacy.limit_usd, "reset": legacy.window})
    names = [b["id"] for b in budgets]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        problems.append(Problem(("budgets",), f"duplicate budget names: {', '.join(dupes)}"))
    converted = {**data, "budgets": budgets, "global": {"budgets": names}}
    return converted, problems


def parse(data: Any, base: Path, origin: str = "rules", *, warnings: list[Problem] | None = None) -> Policy:
    """Validate already-parsed rules data; model table paths are resolved against `base`.
    Raises `RulesInvalid` listing every problem; warnings (legal but likely unmeant settings)
    are appended to `warnings` when given."""
    if data is None:
        # Empty, comments only, or `---`: a proxy that enforces nothing must not start by accident.
        raise PolicyError(f"{origin} is empty; write the limits to enforce (see rules/default.yaml)")
    if not isinstance(data, dict):
        raise PolicyError(f"{origin}: the rules file must be a mapping")
    data = dict(data)
    problems: list[Problem] = []
    if data.get("version", 1) == 1:
        data, problems = _from_version_1(data)
    # Tables the rules do not name are the shipped ones, so a rules file works wherever it is
    # saved; a table the rules name by a relative path is next to the rules file.
    shipped = _shipped_rules_dir()
    data["multipliers"] = _load_table(
        data.get("multipliers", str(shipped / "multipliers.yaml")), base, "multipliers"
    )
    data["model_limits"] = _load_table(
        data.get("model_limits", str(shipped / "model_limits.yaml")), base, "model_limits"
    )
    data["image_formulas"] = _load_table(
        data.get("image_formulas", str(shipped / "image_tokens.yaml")), base, "image_formulas"
    )
    try:
        validated = Policy.model_validate(data)
    except ValidationError as e:
        raise RulesInvalid(origin, problems + validation_problems(e)) from e
    problems += reference_problems(validated)
    fatal = [p for p in problems if p.fatal]
    if fatal:
        raise RulesInvalid(origin, fatal)
    if warnings is not None:
        warnings.extend(p for p in problems if not p.fatal)
    return validated


def load(path: str | Path, *, warnings: list[Problem] | None = None) -> Policy:
    """Load and validate a rules file. Raises `PolicyError` with every problem it finds."""
    p = Path(path)
    return parse(read_yaml(p, "rules file"), p.parent, origin=str(p), warnings=warnings)


def _shipped_rules_dir() -> Path:
    from governance import RULES_DIR

    return RULES_DIR


def require_limits(policy: Policy, origin: str = "rules") -> None:
    """Refuse rules that enforce nothing (no budget, no multiplier cap) unless they say
    `allow_unlimited: true`: `version: 1` alone must not start a proxy that forwards everything."""
    if policy.budgets or policy.rate_limits or policy.max_multiplier is not None or policy.allow_unlimited:
        return
    raise PolicyError(
        f"{origin} sets no limit at all (no budget, no max_multiplier), so the proxy would enforce "
        f"nothing. Add a budget, or set `allow_unlimited: true` to meter without limits."
    )


def with_overrides(
    policy: Policy, *, budget_usd: Decimal | None = None, max_multiplier: Decimal | None = None
) -> Policy:
    """Apply operator overrides: `budget_usd` replaces the budget with id `global` (a cap that
    never resets, attached to the global scope, added when the rules have none);
    `max_multiplier` replaces the multiplier cap."""
    update: dict[str, Any] = {}
    if budget_usd is not None:
        if budget_usd < 0 or not budget_usd.is_finite():
            raise PolicyError(f"budget must be a non-negative amount of USD, not {budget_usd}")
        budgets = [b for b in policy.budgets if b.id != "global"]
        budgets.insert(0, BudgetRule(id="global", max_usd=budget_usd))
        update["budgets"] = budgets
        attached = policy.global_scope.budgets
        if "global" not in attached:
            update["global_scope"] = policy.global_scope.model_copy(update={"budgets": ["global", *attached]})
    if max_multiplier is not None:
        if max_multiplier < 0 or not max_multiplier.is_finite():
            raise PolicyError(f"max multiplier must be a non-negative number, not {max_multiplier}")
        update["max_multiplier"] = max_multiplier
    return policy.model_copy(update=update) if update else policy


def json_schema() -> str:
    """The JSON schema of a rules file, as committed in `rules/policy.schema.json`."""
    schema = Policy.model_json_schema(mode="validation")
    schema["title"] = "spendfuse rules"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"
