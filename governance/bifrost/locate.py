"""Finding the governance section in a parsed Bifrost config.json (`governance`) or Helm values
file (`bifrost.governance`), and reading the flags that say whether every request needs a virtual
key (`is_vk_mandatory`, `enforce_auth_on_inference`, ...). `_locate` returns a `_Source` (the
section with config.json section names, their paths for messages, the key requirement, the
allow-list semantics of the file's version, and the problems found); `find_governance` is the
public view of it. Raises BifrostImportError when there is no section to read."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from governance.bifrost.errors import BifrostImportError, _list
from governance.bifrost.schema import _GOVERNANCE, _HELM_SECTIONS


@dataclass
class _Source:
    """Where the governance section is, and how its file spells things."""

    helm: bool
    governance: dict[str, Any]
    # normalised section name -> its path in the file, for messages
    paths: dict[str, str]
    root: str  # "governance" or "bifrost.governance"
    vk_mandatory: bool | None
    empty_allows_all: bool  # config.json `version: 1`
    problems: list[str]  # every problem found while locating, flag problems included
    flag_problems: list[str]  # problems with the flags that say whether a key is required


def _locate(data: object) -> _Source:
    problems: list[str] = []
    flags: list[str] = []
    if not isinstance(data, Mapping):
        raise BifrostImportError(
            ["(top level): expected a Bifrost config.json object or Helm values mapping"]
        )
    bifrost = data.get("bifrost")
    if isinstance(bifrost, Mapping) and "governance" in bifrost:
        raw = bifrost.get("governance")
        root = "bifrost.governance"
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise BifrostImportError([f"{root}: must be a mapping"])
        governance: dict[str, Any] = {}
        paths: dict[str, str] = {}
        for key, value in raw.items():
            name = _HELM_SECTIONS.get(key)
            if name is None:
                # The chart reads only the keys above: anything else never reaches Bifrost.
                problems.append(
                    f"{root}.{key}: unknown key; the Bifrost chart reads only {_list(_HELM_SECTIONS)}"
                )
                continue
            governance[name] = value
            paths[name] = f"{root}.{key}"
        return _Source(
            helm=True,
            governance=governance,
            paths=paths,
            root=root,
            vk_mandatory=_helm_vk_mandatory(bifrost, governance, flags),
            empty_allows_all=False,  # the chart renders no `version`, so v1.5 semantics apply
            problems=problems + flags,
            flag_problems=flags,
        )
    if "governance" in data:
        raw = data.get("governance")
        root = "governance"
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise BifrostImportError([f"{root}: must be an object"])
        governance = dict(raw)
        for key in governance:
            if key not in _GOVERNANCE:
                problems.append(f"{root}.{key}: unknown key; Bifrost's governance has {_list(_GOVERNANCE)}")
        governance = {k: v for k, v in governance.items() if k in _GOVERNANCE}
        version = data.get("version", 2)
        if version not in (1, 2) or isinstance(version, bool):
            problems.append(f"version: {version!r} is not a Bifrost config version (1 or 2)")
        return _Source(
            helm=False,
            governance=governance,
            paths={k: f"{root}.{k}" for k in governance},
            root=root,
            vk_mandatory=_config_vk_mandatory(data, governance, flags),
            empty_allows_all=version == 1,
            problems=problems + flags,
            flag_problems=flags,
        )
    raise BifrostImportError(
        [
            "(top level): no governance section: expected `governance` (config.json) "
            "or `bifrost.governance` (Helm values)"
        ]
    )


def _flag(container: object, key: str, path: str, problems: list[str]) -> bool | None:
    if not isinstance(container, Mapping) or key not in container or container[key] is None:
        return None
    value = container[key]
    if not isinstance(value, bool):
        problems.append(f"{path}: must be true or false, not {value!r}")
        return None
    return value


def _any_required(flags: Iterable[bool | None], disabled: bool | None) -> bool | None:
    """Bifrost requires a key when any of its switches says so; `disable_auth_on_inference: true`
    overrides the client switches (its docs call it the more specific flag)."""
    plugin, *client = flags
    client_set = [f for f in client if f is not None]
    client_value: bool | None = any(client_set) if client_set else None
    if disabled:
        client_value = False
    present = [f for f in (plugin, client_value) if f is not None]
    return any(present) if present else None


def _config_vk_mandatory(
    data: Mapping[str, Any], governance: Mapping[str, Any], problems: list[str]
) -> bool | None:
    plugin: bool | None = None
    plugins = data.get("plugins")
    if isinstance(plugins, list):
        for i, p in enumerate(plugins):
            if (
                isinstance(p, Mapping)
                and p.get("name") == "governance"
                and p.get("enabled", True) is not False
            ):
                value = _flag(
                    p.get("config"), "is_vk_mandatory", f"plugins[{i}].config.is_vk_mandatory", problems
                )
                if value is not None:
                    plugin = value if plugin is None else plugin or value
    client = data.get("client")
    return _any_required(
        (
            plugin,
            _flag(client, "enforce_auth_on_inference", "client.enforce_auth_on_inference", problems),
            _flag(client, "enforce_governance_header", "client.enforce_governance_header", problems),
        ),
        _flag(
            governance.get("auth_config"),
            "disable_auth_on_inference",
            "governance.auth_config.disable_auth_on_inference",
            problems,
        ),
    )


def _helm_vk_mandatory(
    bifrost: Mapping[str, Any], governance: Mapping[str, Any], problems: list[str]
) -> bool | None:
    plugin: bool | None = None
    plugins = bifrost.get("plugins")
    gov_plugin = plugins.get("governance") if isinstance(plugins, Mapping) else None
    # The chart renders the plugin's config only when the plugin is enabled.
    if isinstance(gov_plugin, Mapping) and gov_plugin.get("enabled") is True:
        plugin = _flag(
            gov_plugin.get("config"),
            "is_vk_mandatory",
            "bifrost.plugins.governance.config.is_vk_mandatory",
            problems,
        )
    client = bifrost.get("client")
    return _any_required(
        (
            plugin,
            _flag(client, "enforceAuthOnInference", "bifrost.client.enforceAuthOnInference", problems),
            _flag(client, "enforceGovernanceHeader", "bifrost.client.enforceGovernanceHeader", problems),
        ),
        _flag(
            governance.get("auth_config"),
            "disableAuthOnInference",
            "bifrost.governance.authConfig.disableAuthOnInference",
            problems,
        ),
    )


def find_governance(data: object) -> tuple[dict[str, Any], bool | None]:
    """The governance section of a Bifrost config.json (`governance`) or Helm values
    (`bifrost.governance`), as the file writes it (Helm keeps its camelCase section names), and
    whether the file requires a virtual key on every request: True when any of
    `plugins[governance].config.is_vk_mandatory`, `client.enforce_auth_on_inference` or
    `client.enforce_governance_header` (Helm: `bifrost.plugins.governance.config.is_vk_mandatory`
    when the plugin is enabled, `bifrost.client.enforceAuthOnInference`,
    `bifrost.client.enforceGovernanceHeader`) is true, unless
    `auth_config.disable_auth_on_inference` turns the client flags off; False when the ones
    present are false; None when the file sets none of them.

    Raises BifrostImportError when there is no governance section, or a flag is not a boolean."""
    src = _locate(data)
    if src.flag_problems:
        raise BifrostImportError(src.flag_problems)
    assert isinstance(data, Mapping)  # _locate refuses anything else
    section = data["bifrost"]["governance"] if src.helm else data["governance"]
    return dict(section or {}), src.vk_mandatory
