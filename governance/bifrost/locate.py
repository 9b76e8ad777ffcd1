"""Finding the governance section in a parsed Bifrost config.json (`governance`) or Helm values
file (`bifrost.governance`), and reading the flags that say whether every request needs a virtual
key (`is_vk_mandatory`, `enforce_auth_on_inference`, ...). `_locate` returns a `_Source` (the
section with config.json section names, their paths for messages, the key requirement, the
allow-list semantics of the file's version, and the problems found); `find_governance` is the
public view of it. Raises BifrostImportError when there is no section to read."""

from __future__ import annotations

from collections.abc import Mapping
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
    # the file's provider settings (config.json `providers`, Helm `bifrost.providers`): their
    # keys become custody credentials, self-hosted ones operator hosts; None when absent
    providers: object = None
    providers_path: str = "providers"


def _locate(data: object) -> _Source:
    """The governance section of a config.json or Helm values file, and what its file says about
    it. Raises BifrostImportError when there is no section, or it is not a mapping."""
    if not isinstance(data, Mapping):
        raise BifrostImportError(
            ["(top level): expected a Bifrost config.json object or Helm values mapping"]
        )
    bifrost = data.get("bifrost")
    if isinstance(bifrost, Mapping) and "governance" in bifrost:
        return _helm_source(bifrost)
    if "governance" in data:
        return _config_source(data)
    raise BifrostImportError(
        [
            "(top level): no governance section: expected `governance` (config.json) "
            "or `bifrost.governance` (Helm values)"
        ]
    )


def _section(container: Mapping[str, Any], root: str, what: str) -> Mapping[str, Any]:
    """`container["governance"]`, which must be `what` (a mapping) or empty."""
    raw = container.get("governance")
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise BifrostImportError([f"{root}: must be {what}"])
    return raw


def _helm_source(bifrost: Mapping[str, Any]) -> _Source:
    """`bifrost.governance` of a Helm values file, its camelCase sections renamed as config.json's."""
    root = "bifrost.governance"
    raw = _section(bifrost, root, "a mapping")
    problems: list[str] = []
    flags: list[str] = []
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
        providers=bifrost.get("providers"),
        providers_path="bifrost.providers",
    )


def _config_source(data: Mapping[str, Any]) -> _Source:
    """`governance` of a config.json, and the allow-list meaning of its `version`."""
    root = "governance"
    raw = _section(data, root, "an object")
    problems: list[str] = []
    flags: list[str] = []
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
        providers=data.get("providers"),
        providers_path="providers",
    )


def _flag(container: object, key: str, path: str, problems: list[str]) -> bool | None:
    if not isinstance(container, Mapping) or key not in container or container[key] is None:
        return None
    value = container[key]
    if not isinstance(value, bool):
        problems.append(f"{path}: must be true or false, not {value!r}")
        return None
    return value


def _key_required(
    plugin: bool | None,
    client: object,
    client_root: str,
    client_keys: tuple[str, str],
    auth_config: object,
    disable_path: str,
    problems: list[str],
) -> bool | None:
    """Bifrost requires a key when any of its switches says so (the plugin's, then the client's
    `client_keys` under `client_root`); the auth config's disable flag (`disable_path`) set true
    overrides the client switches (its docs call it the more specific flag)."""
    client_set = [
        f for k in client_keys if (f := _flag(client, k, f"{client_root}.{k}", problems)) is not None
    ]
    client_value: bool | None = any(client_set) if client_set else None
    if _flag(auth_config, disable_path.rsplit(".", 1)[1], disable_path, problems):
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
    return _key_required(
        plugin,
        data.get("client"),
        "client",
        ("enforce_auth_on_inference", "enforce_governance_header"),
        governance.get("auth_config"),
        "governance.auth_config.disable_auth_on_inference",
        problems,
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
    return _key_required(
        plugin,
        bifrost.get("client"),
        "bifrost.client",
        ("enforceAuthOnInference", "enforceGovernanceHeader"),
        governance.get("auth_config"),
        "bifrost.governance.authConfig.disableAuthOnInference",
        problems,
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
