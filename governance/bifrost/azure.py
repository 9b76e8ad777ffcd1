"""A Bifrost Azure key's `azure_key_config`: its endpoint becomes the host its credential may be
sent to (an Azure custody key names its hosts: see `governance.crossref_deployments`), and its
`deployments` (model -> deployment name) become the rules' `azure_deployments` for that host
(deployment -> model)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from governance.bifrost.state import _State


def azure_key(st: _State, key: Mapping[str, Any], where: str, cred: dict[str, Any]) -> bool:
    """Complete `cred` (an azure credential) from the key's `azure_key_config`. False, with a
    note, when it names no endpoint: such a key could go to any resource, so it is left out."""
    config = key.get("azure_key_config")
    endpoint = config.get("endpoint") if isinstance(config, Mapping) else None
    host = urlsplit(endpoint).hostname if isinstance(endpoint, str) else None
    if not host:
        st.notes.append(
            f"{where}: left out: an Azure key without azure_key_config.endpoint could be sent to any "
            "resource; spendfuse sends an Azure key only to the hosts its credential names"
        )
        return False
    cred["hosts"] = [host]
    deployments = config.get("deployments") if isinstance(config, Mapping) else None
    for model, deployment in (deployments or {}).items():
        if isinstance(model, str) and isinstance(deployment, str) and model and deployment:
            st.azure_deployments[f"{host}/{deployment}"] = model
    return True
