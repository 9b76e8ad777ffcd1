"""A Bifrost file's provider settings (config.json `providers`, Helm `bifrost.providers`):
`read_providers` turns each provider key whose value is `env.NAME` into a custody credential
that reads the same environment variable, and each self-hosted provider (ollama, vllm, sgl, a
custom OpenAI-compatible provider with a base URL, and Hugging Face's router) into an operator
host entry (`governance.bifrost.hosts`).

Contract:
* A provider key's value is never read, and never written into the rules: `env.NAME` becomes
  `{id, provider, env: NAME}`. A literal value is a problem naming its path (move it into an
  environment variable), and is remembered so `convert.check_secrets` proves it is printed
  nowhere. Bifrost key weights become credential weights; a key's `models` its credential's
  models (`["*"]`: every model).
* A key with no value (Azure managed identity, Vertex workload identity, Bedrock IAM roles or
  SigV4 key pairs) authenticates with cloud credentials spendfuse cannot hold: it is left out
  with a note, and requests Bifrost would send with it must bring their own credential.
* `st.key_refs` maps (provider, key name or id) to the credential id, or None for a key left
  out, so provider configs' `key_ids` / `keys` can name them (`governance.bifrost.allow`).
* A provider spendfuse neither prices nor can host is left out with a note; a virtual key that
  names it is still refused (`_State.provider`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from governance.bifrost.azure import azure_key
from governance.bifrost.hosts import HOSTED, add_host
from governance.bifrost.providers import PROVIDERS
from governance.bifrost.state import _ID, _decimal, _State

_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


def read_providers(st: _State) -> None:
    """Read every provider of the file's provider settings (see the module docstring)."""
    providers, path = st.src.providers, st.src.providers_path
    if providers is None:
        return
    if not isinstance(providers, Mapping):
        st.bad(path, "must be a mapping of provider name to its settings")
        return
    for name, settings in providers.items():
        where = f"{path}.{name}"
        if not isinstance(settings, Mapping):
            st.bad(where, "must be a mapping")
            continue
        if name in HOSTED or _custom_base_url(settings) is not None:
            if not add_host(st, name, settings, where):
                continue
        elif name not in PROVIDERS:
            st.notes.append(
                f"{where}: left out: spendfuse has no host or prices for Bifrost provider {name!r}, "
                "so requests to it are refused as unknown LLM hosts"
            )
            continue
        st.configured.add(name)
        for j, key in enumerate(st.listed(settings, "keys", where)):
            _read_key(st, name, key, f"{where}.keys[{j}]")


def _left_out_settings(st: _State, key: Mapping[str, Any], where: str) -> None:
    """Notes for a provider key's routing settings, which mean nothing to a proxy."""
    for field in sorted(f for f in key if f.endswith("_key_config")):
        st.notes.append(
            f"{where}.{field}: left out: Bifrost's endpoint, deployment and region settings; clients "
            "call the provider's endpoint themselves"
        )
    if key.get("aliases") not in (None, {}):
        st.notes.append(
            f"{where}.aliases: left out: Bifrost renames models for this key; with spendfuse the "
            "client sends the provider's own model name"
        )


def _custom_base_url(settings: Mapping[str, Any]) -> object:
    """The base URL of a custom provider (`custom_provider_config` + `network_config.base_url`)."""
    if settings.get("custom_provider_config") in (None, {}):
        return None
    network = settings.get("network_config")
    return network.get("base_url") if isinstance(network, Mapping) else None


def _read_key(st: _State, provider: str, key: object, where: str) -> None:
    """One provider key: a credential, a note (no value), or a problem (a literal value)."""
    if not isinstance(key, Mapping):
        st.bad(where, "must be a mapping")
        return
    refs = [r for r in (key.get("name"), key.get("id")) if isinstance(r, str) and r]
    if not refs:
        st.bad(where, "a provider key needs a name (virtual keys' key_ids name it)")
        return
    ident = refs[0]
    value = key.get("value")
    if value in (None, "") and provider in st.hosts:
        for r in refs:  # a self-hosted server that takes no key
            st.key_refs[provider, r] = None
        return
    if value in (None, ""):
        st.notes.append(
            f"{where}: left out: it has no key value (cloud identity or signed requests), which "
            f"spendfuse cannot hold; requests Bifrost would send with it must authenticate themselves"
        )
        for r in refs:
            st.key_refs[provider, r] = None
        return
    if not isinstance(value, str):
        st.bad(f"{where}.value", "must be text")
        return
    if not value.startswith("env."):
        # Remembered so the check that no secret is printed covers provider keys as well.
        st.secrets[where] = value
        if st.secrets_dir is not None and not value.startswith("vault."):
            _credential(st, provider, key, where, ident, refs, None, value)
            return
        what = "a vault reference" if value.startswith("vault.") else "a provider key written into the file"
        st.bad(
            f"{where}.value",
            f"{what}: spendfuse reads provider keys from the environment or a file, never from its "
            f"rules; put the key in an environment variable and write env.NAME here, or import with "
            f"--secrets-dir DIR to have it written to a file there",
        )
        return
    _credential(st, provider, key, where, ident, refs, value[4:], None)


def _credential(
    st: _State,
    provider: str,
    key: Mapping[str, Any],
    where: str,
    ident: str,
    refs: list[str],
    var: str | None,
    literal: str | None,
) -> None:
    """Add the credential of one provider key: read from environment variable `var`, or (with
    `--secrets-dir`) from the file its `literal` value is written to."""
    if var is not None and not re.fullmatch(_ENV_NAME, var):
        st.bad(f"{where}.value", f"{var!r} is not an environment variable name")
        return
    if not _ID.fullmatch(ident):
        st.bad(where, f"{ident!r} is not a spendfuse id (letters, digits, _ . -; at most 128)")
        return
    if ident in st.credentials:
        st.bad(where, f"duplicate provider key name {ident!r}")
        return
    cred: dict[str, Any] = {"id": ident, "provider": st.provider(provider, where)}
    if cred["provider"] is None:
        return
    if literal is None:
        cred["env"] = var
    else:
        cred["file"] = file = f"{st.secrets_dir}/{ident}.key"
        st.files[file] = literal
        st.notes.append(f"{where}.value: a key written into the file: moved to {file} (mode 0600)")
    weight = key.get("weight")
    if weight is not None:
        w = _decimal(weight)
        if w is None or w <= 0:
            st.bad(f"{where}.weight", "must be a number above 0")
            return
        if w != 1:
            cred["weight"] = w
    models = key.get("models")
    if models == []:
        st.notes.append(f"{where}: left out: its models list is empty, so it serves no model")
        for r in refs:
            st.key_refs[provider, r] = None
        return
    if models not in (None, ["*"]):
        if not isinstance(models, list) or not all(isinstance(m, str) and m and "*" not in m for m in models):
            st.bad(f"{where}.models", 'must be a list of model names, or ["*"]')
            return
        cred["models"] = list(models)
    if cred["provider"] == "azure":
        if not azure_key(st, key, where, cred):
            for r in refs:
                st.key_refs[provider, r] = None
            return
    else:
        _left_out_settings(st, key, where)
    st.credentials[ident] = cred
    st.provider_creds.setdefault(provider, []).append(ident)
    for r in refs:
        st.key_refs[provider, r] = ident
