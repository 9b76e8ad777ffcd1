"""Self-hosted Bifrost providers as spendfuse operator hosts: `add_host` turns an ollama, vllm or
sgl provider (the URL of its keys' `<provider>_key_config.url`), a custom OpenAI-compatible
provider (`network_config.base_url`), or Hugging Face's router into a `hosts:` entry metered as
the OpenAI family, with the prices `pricing_overrides` give it (`governance.bifrost.pricing`) or
the price the importer is given for self-hosted models (`--self-hosted-price`).

Contract: a URL is not a secret, so `env.NAME` is read from the environment the importer is given
(a problem naming the path when it is unset); a host with no price is a problem, never a guess:
spendfuse would otherwise refuse every request to it as unpriced, or reserve too little.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from governance.bifrost.state import _State

#: Bifrost providers that call an OpenAI-compatible server: the URL field of their keys' config,
#: or a fixed URL for a hosted router.
HOSTED: dict[str, str] = {
    "ollama": "ollama_key_config",
    "vllm": "vllm_key_config",
    "sgl": "sgl_key_config",
    "huggingface": "https://router.huggingface.co",
}


def add_host(st: _State, name: str, settings: Mapping[str, Any], where: str) -> bool:
    """Add the operator host entry of self-hosted provider `name`; False after a problem."""
    urls = _urls(st, name, settings, where)
    if not urls:
        if urls is not None:
            st.bad(where, f"a self-hosted {name} provider with no URL: spendfuse needs its host to meter it")
        return False
    hosts, paths = set(), set()
    for url, at in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            st.bad(at, f"{url!r} is not an http(s) URL")
            return False
        hosts.add(parts.hostname.lower())
        paths.add(parts.path.rstrip("/"))
    if len(paths) > 1:
        st.bad(
            where, f"its servers use different paths ({', '.join(sorted(paths))}); give each its own provider"
        )
        return False
    prefix = paths.pop()
    family = _family(settings)
    if family is None:
        st.bad(
            f"{where}.custom_provider_config.base_provider_type",
            "spendfuse meters custom providers that speak the openai or anthropic API only",
        )
        return False
    entry: dict[str, Any] = {
        "name": f"bifrost-{name}",
        "match": sorted(hosts),
        "family": family,
        "provider": name,
        # Bifrost appends the API's own /v1 to these base URLs, unless the URL already ends in it.
        "base_path": prefix if prefix.endswith("/v1") else f"{prefix}/v1",
    }
    if family == "anthropic":
        entry["base_path"] = prefix or "/v1"
    st.hosts[name] = entry
    return True


def _family(settings: Mapping[str, Any]) -> str | None:
    """The API family a self-hosted provider speaks: a custom provider's `base_provider_type`
    when it is openai or anthropic (None: another API, not metered), else openai."""
    custom = settings.get("custom_provider_config")
    if not isinstance(custom, Mapping):
        return "openai"
    base = custom.get("base_provider_type")
    return base if base in ("openai", "anthropic") else None


def _urls(st: _State, name: str, settings: Mapping[str, Any], where: str) -> list[tuple[str, str]] | None:
    """Every server URL of the provider, with its path; None after a problem."""
    fixed = HOSTED.get(name, "")
    if fixed.startswith("https://"):
        return [(fixed, where)]
    found: list[tuple[str, str]] = []
    network = settings.get("network_config")
    if isinstance(network, Mapping) and network.get("base_url"):
        found.append((network["base_url"], f"{where}.network_config.base_url"))
    keys = settings.get("keys")
    for j, key in enumerate(keys if isinstance(keys, list) else []):
        cfg = key.get(fixed) if isinstance(key, Mapping) and fixed else None
        if isinstance(cfg, Mapping) and cfg.get("url"):
            found.append((cfg["url"], f"{where}.keys[{j}].{fixed}.url"))
    out: list[tuple[str, str]] = []
    for url, at in found:
        if not isinstance(url, str):
            st.bad(at, "must be text")
            return None
        resolved = st.env(url, at, " to the server's URL")
        if resolved is None:
            return None
        out.append((resolved, at))
    return out


def host_prices(st: _State, host_prices: Mapping[str, Mapping[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """The host entries, each with its prices from `host_prices` (provider -> model -> price) or
    the importer's self-hosted price; a host with neither is a problem."""
    out = []
    for name, entry in st.hosts.items():
        prices = host_prices.get(name, {})
        if prices:
            entry["prices"] = dict(prices)
        if st.self_hosted_price is not None:
            entry["default_price"] = dict(st.self_hosted_price)
        elif not prices:
            st.bad(
                f"{st.src.providers_path}.{name}",
                f"no price is known for models on {name}: pass --self-hosted-price INPUT:OUTPUT (USD per "
                "1M tokens) or give it a provider-scoped pricing_override; spendfuse never guesses a price",
            )
            continue
        out.append(entry)
    return out
