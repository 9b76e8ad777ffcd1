"""`spendfuse check FILE`: validate a rules file and say where each problem is.

`governance.policy` knows *what* is wrong (`Problem.loc`, a path into the data as written);
this module finds *where* it is, by walking the YAML node tree (`yaml.compose`, which keeps the
line and column of every node and constructs nothing, so no tag is ever executed), and prints
the effective policy in words so the operator can see what the file actually enforces.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Protocol

import yaml

from governance.errors import PolicyError
from governance.limits import BudgetRule, Key, RateLimitRule
from governance.policy import Policy, Problem, RulesInvalid, parse, parse_yaml, require_limits
from governance.types import usd

__all__ = ["Located", "check_file", "check_text", "describe", "locate", "render"]

#: Rules keys that may name a YAML file holding a model table, read relative to the rules file.
_TABLE_KEYS = ("multipliers", "model_limits", "image_formulas")
#: `where` of problems that are not at a path in the data.
_YAML_WHERE = "(yaml)"
_FILE_WHERE = "(file)"
_TOP_WHERE = "(top level)"


@dataclass(frozen=True)
class Located:
    """One problem in a rules file, at its place in the file.

    `line` and `column` are 1-based, or None when the problem has no place (an unreadable file,
    an empty one). `where` is the dotted path into the data (`keys.2.team`), `(yaml)` for a
    syntax error, `(top level)` for the file as a whole. `fatal` False is a warning: legal, but
    likely not what was meant."""

    line: int | None
    column: int | None
    where: str
    message: str
    fatal: bool


# --- locating -------------------------------------------------------------------------------


def _compose(text: str) -> yaml.Node | None:
    """The YAML node tree of `text`, or None when it is empty or not YAML."""
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None


def _mapping_entries(node: yaml.MappingNode) -> Iterable[tuple[yaml.Node, yaml.Node]]:
    """A mapping's own entries, then those it merges in (`<<: *anchor`), as the loader sees them."""
    merged: list[yaml.Node] = []
    for key, value in node.value:
        if key.tag == "tag:yaml.org,2002:merge":
            merged += value.value if isinstance(value, yaml.SequenceNode) else [value]
        else:
            yield key, value
    for source in merged:
        if isinstance(source, yaml.MappingNode):
            yield from _mapping_entries(source)


def _child(node: yaml.Node, part: str | int) -> tuple[yaml.Node, yaml.Node] | None:
    """The (anchor, value) of `node`'s child `part`: for a mapping entry, its key node and value
    node; for a sequence item, the item twice. None when there is no such child."""
    if isinstance(node, yaml.MappingNode):
        for key, value in _mapping_entries(node):
            if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                return key, value
    elif isinstance(node, yaml.SequenceNode):
        if isinstance(part, int) and not isinstance(part, bool) and 0 <= part < len(node.value):
            item = node.value[part]
            return item, item
    return None


def _node_at(root: yaml.Node, loc: tuple[str | int, ...]) -> yaml.Node:
    """The node that `loc` names, or its nearest existing ancestor. A mapping entry is its key
    node; a missing key is its mapping; a path into a scalar (say a model table given as a file
    name) stops at the scalar's key. A step missing from the file with the next step right below
    it is skipped: pydantic names the union member it tried (`multipliers.dict[str,decimal].gpt`)."""
    anchor = value = root
    rest = list(loc)
    while rest:
        found = _child(value, rest[0])
        if found is None and len(rest) > 1:
            found = _child(value, rest[1])
            rest = rest[1:] if found is not None else rest
        if found is None:
            return value if isinstance(value, yaml.CollectionNode) else anchor
        anchor, value = found
        rest = rest[1:]
    return anchor


def _position(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


def locate(text: str, loc: tuple[str | int, ...]) -> tuple[int, int] | None:
    """Line and column (1-based) of the node at `loc` in the YAML `text`, or of its nearest
    ancestor that exists (a missing key points at its mapping). Uses yaml.compose (node marks);
    never executes tags.

    A mapping entry is located at its key (`reset:` rather than its value), a list item at the
    item. Keys are matched by their text (`str(part)`), list items by index; entries merged in
    with `<<:` are found too. None when `text` is empty or not YAML."""
    root = _compose(text)
    return None if root is None else _position(_node_at(root, loc))


def _path_to(node: yaml.Node, index: int, path: tuple[str | int, ...] = ()) -> tuple[str | int, ...]:
    """The path to the key that starts at character `index`, or to the deepest node around it."""
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if key.start_mark.index == index:
                return (*path, key.value) if isinstance(key, yaml.ScalarNode) else path
            if value.start_mark.index <= index < value.end_mark.index and isinstance(key, yaml.ScalarNode):
                return _path_to(value, index, (*path, key.value))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            if item.start_mark.index <= index < item.end_mark.index:
                return _path_to(item, index, (*path, i))
    return path


def _where(loc: tuple[str | int, ...]) -> str:
    return ".".join(str(p) for p in loc) or _TOP_WHERE


# --- checking -------------------------------------------------------------------------------


def _yaml_problem(text: str, e: yaml.YAMLError) -> Located:
    """A YAML error (syntax, duplicate key, unknown tag) at its mark."""
    if not isinstance(e, yaml.MarkedYAMLError):
        return Located(None, None, _YAML_WHERE, str(e), True)
    mark = e.problem_mark or e.context_mark
    message = e.problem or e.context or "invalid YAML"
    if e.problem and e.context:
        if e.context_mark is not None and e.problem_mark is not None and e.context_mark.line != mark.line:
            message = f"{e.problem} ({e.context} on line {e.context_mark.line + 1})"
        else:
            message = f"{e.problem} ({e.context})"
    where = _YAML_WHERE
    root = _compose(text)  # composes when the error came from constructing (a duplicate key)
    if root is not None and mark is not None:
        where = _where(_path_to(root, mark.index))
    if mark is None:
        return Located(None, None, where, message, True)
    return Located(mark.line + 1, mark.column + 1, where, message, True)


def _plain_error_loc(e: PolicyError) -> tuple[str | int, ...]:
    """Where a problem `parse` reports without a path (a model table that cannot be read) is."""
    text = str(e)
    for key in _TABLE_KEYS:
        if f"{key} table" in text:
            return (key,)
    return ()


def _located(root: yaml.Node | None, problem: Problem) -> Located:
    line = column = None
    if root is not None:
        line, column = _position(_node_at(root, problem.loc))
    return Located(line, column, _where(problem.loc), problem.message, problem.fatal)


def _in_file_order(problems: list[Located]) -> list[Located]:
    """By line and column (problems without one last); ties keep the order they were found in."""
    return sorted(problems, key=lambda p: (p.line is None, p.line or 0, p.column or 0))


def check_text(text: str, base: Path, origin: str) -> tuple[Policy | None, list[Located]]:
    """Validate rules text: the policy (None when fatal problems) and every problem, located,
    in file order. YAML errors (syntax, duplicate keys) become Located problems with their marks.

    Model tables named by file (`multipliers: multipliers.yaml`) are read relative to `base`, the
    rules file's directory; a table that cannot be read is an error at its key. Warnings are
    those `policy.parse` reports (an empty allow-list), plus rules that set no limit at all (the
    proxy then starts only with a budget given by option, or `allow_unlimited: true`). When
    there are fatal problems, `policy.parse` reports only those, so warnings are not listed.
    Never raises for anything wrong in `text`."""
    try:
        data = parse_yaml(text)
    except yaml.YAMLError as e:
        return None, [_yaml_problem(text, e)]
    root = _compose(text)
    warnings: list[Problem] = []
    try:
        parsed: Policy | None = parse(data, base, origin, warnings=warnings)
    except RulesInvalid as e:
        parsed, problems = None, list(e.problems)
    except PolicyError as e:
        message = str(e).removeprefix(f"{origin}: ")
        parsed, problems = None, [Problem(_plain_error_loc(e), message)]
    else:
        problems = list(warnings)
        try:
            require_limits(parsed, origin)
        except PolicyError:
            problems.append(
                Problem(
                    (),
                    "sets no limit at all (no budget, rate limit or max_multiplier): the proxy starts only "
                    "with a budget given by option (SPENDFUSE_BUDGET), or with `allow_unlimited: true`",
                    fatal=False,
                )
            )
    return parsed, _in_file_order([_located(root, p) for p in problems])


def check_file(path: Path) -> tuple[Policy | None, list[Located]]:
    """`check_text` on the file at `path` (UTF-8), its model tables relative to its directory,
    named by `str(path)`. A file that cannot be read is one error without a line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, [Located(None, None, _FILE_WHERE, "no such file", True)]
    except (OSError, UnicodeDecodeError) as e:
        return None, [Located(None, None, _FILE_WHERE, f"cannot read: {e}", True)]
    return check_text(text, Path(path).parent, str(path))


# --- describing -----------------------------------------------------------------------------


def _ids(ids: list[str]) -> str:
    return ", ".join(ids)


def _window(rule: BudgetRule | RateLimitRule) -> str:
    return f"calendar, {rule.timezone}" if rule.calendar else "rolling"


def _budget(b: BudgetRule) -> str:
    if b.reset == "never":
        return f"{b.id}: max {usd(b.max_usd)}, never resets"
    return f"{b.id}: max {usd(b.max_usd)} per {b.reset} ({_window(b)})"


def _rate_limit(r: RateLimitRule) -> str:
    parts = []
    if r.max_requests is not None:
        parts.append(f"{r.max_requests} requests per {r.requests_reset}")
    if r.max_tokens is not None:
        parts.append(f"{r.max_tokens} {r.count_tokens} tokens per {r.tokens_reset}")
    if r.max_in_flight is not None:
        parts.append(f"{r.max_in_flight} in flight")
    windowed = r.max_requests is not None or r.max_tokens is not None
    return f"{r.id}: {'; '.join(parts)}" + (f" ({_window(r)})" if windowed else "")


class _Scope(Protocol):
    @property
    def budgets(self) -> list[str]: ...
    @property
    def rate_limits(self) -> list[str]: ...


def _attached(scope: _Scope) -> list[str]:
    return [
        f"budgets: {_ids(scope.budgets) or 'none'}",
        f"rate limits: {_ids(scope.rate_limits) or 'none'}",
    ]


def _allowed(values: list[str] | None) -> str:
    if values is None:
        return "any"
    return _ids(values) or "none"


def _multiplier(value: Decimal | None) -> str:
    return "none" if value is None else f"{value.normalize():f}"


def _key(k: Key) -> list[str]:
    parent = f"team {k.team}" if k.team else f"customer {k.customer}" if k.customer else "no team or customer"
    status = "active" if k.active else "inactive"
    expiry = f"expires {k.expires_at.isoformat()}" if k.expires_at else "never expires"
    return [
        f"{parent}; {status}, {expiry}",
        # Whether there is a secret, never its hash: this output is pasted into tickets and chats.
        f"secret: {'yes' if k.secret_sha256 is not None else 'no'}",
        f"listeners: {_ids(k.listeners) or 'none'}",
        f"allowed models: {_allowed(k.allowed_models)}",
        f"denied models: {_ids(k.denied_models) or 'none'}",
        f"allowed providers: {_allowed(k.allowed_providers)}",
        f"multiplier cap: {_multiplier(k.max_multiplier)}",
        *_attached(k),
    ]


def _named(ident: str, name: str | None) -> str:
    return f"{ident} ({name})" if name else ident


def _scope_lines(head: str, details: list[str]) -> list[str]:
    return [f"  {head}", *(f"    {d}" for d in details)]


def describe(policy: Policy) -> str:
    """The effective policy as a human reads it: version, every budget (id, max, reset,
    calendar/tz), every rate limit, and for each scope (global, providers, models, customers,
    teams with their customer, keys with team/customer, active/expiry, listeners, allowed/denied
    models and providers (unset: any; []: none), multiplier cap, whether it has a secret — never
    print the hash) the limits attached by id; require_key; max_multiplier; egress mode;
    clamp_output; ledger hold TTL.

    One item a line, sections unindented and their items indented; no trailing newline. A
    version 1 file is described as it is enforced: its budgets attached to `global`."""
    lines = [f"version: {policy.version}", "budgets:"]
    lines += [f"  {_budget(b)}" for b in policy.budgets] or ["  none"]
    lines.append("rate limits:")
    lines += [f"  {_rate_limit(r)}" for r in policy.rate_limits] or ["  none"]
    lines.append("scopes:")
    lines += _scope_lines("global", _attached(policy.global_scope))
    for p in policy.providers:
        lines += _scope_lines(f"provider {p.provider}", _attached(p))
    for m in policy.models:
        lines += _scope_lines(f"model {m.model}", [f"provider: {m.provider or 'any'}", *_attached(m)])
    for c in policy.customers:
        lines += _scope_lines(f"customer {_named(c.id, c.name)}", _attached(c))
    for t in policy.teams:
        lines += _scope_lines(
            f"team {_named(t.id, t.name)}", [f"customer: {t.customer or 'none'}", *_attached(t)]
        )
    for k in policy.keys:
        lines += _scope_lines(f"key {_named(k.id, k.name)}", _key(k))
    lines.append(f"require_key: {'yes' if policy.require_key else 'no'}")
    lines.append(f"max_multiplier: {_multiplier(policy.max_multiplier)}")
    egress = policy.egress
    if egress.mode == "allowlist":
        hosts = [f"{a.host}:{','.join(map(str, a.ports))}" if a.ports else a.host for a in egress.allow]
        lines.append(f"egress: allowlist ({_ids(hosts) or 'LLM hosts only'})")
    else:
        lines.append("egress: open")
    clamp = policy.clamp_output
    lines.append(
        "clamp_output: off" if clamp is None else f"clamp_output: on, floor {clamp.floor_tokens} tokens"
    )
    lines.append(f"ledger hold TTL: {policy.ledger.hold_ttl_seconds}s")
    return "\n".join(lines)


# --- rendering ------------------------------------------------------------------------------


def _problem_line(origin: str, p: Located) -> str:
    place = origin if p.line is None else f"{origin}:{p.line}:{p.column}"
    return f"{place}: {'error' if p.fatal else 'warning'}: {p.where}: {p.message}"


def render(origin: str, policy: Policy | None, problems: list[Located]) -> str:
    """`spendfuse check` output: each problem as `FILE:LINE:COL: error|warning: where: message`, then the
    effective policy when valid, and a last line `ok` / `N error(s)`.

    A problem without a place is `FILE: error: where: message`. The description is set off by
    blank lines; the last line is `ok` when no problem is fatal, else `1 error` / `N errors`.
    Ends with a newline."""
    out = [_problem_line(origin, p) for p in problems]
    if policy is not None:
        if out:
            out.append("")
        out += [describe(policy), ""]
    errors = sum(p.fatal for p in problems)
    out.append("ok" if errors == 0 else f"{errors} error{'s' if errors != 1 else ''}")
    return "\n".join(out) + "\n"
