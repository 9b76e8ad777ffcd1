"""What spendfuse notes on a flow for whoever reads it later (mitmweb, a `-w` flow file,
`spendfuse simulate`): `flow.metadata["spendfuse"]`.

A flow file is written by mitmproxy's Save addon in its own `response` hook, which runs before
spendfuse's: anything noted from the `response` hook on is not in the file. A streamed body is
not kept either, so its usage is noted when the stream ends, before the `response` hooks run.
"""

from __future__ import annotations

from mitmproxy import http

from governance.types import USAGE_COUNTS, Usage

#: The metadata key of spendfuse's notes.
KEY = "spendfuse"


def note_usage(flow: http.HTTPFlow, usage: Usage | None) -> None:
    """Note the usage a stream reported (nothing when it reported none)."""
    if usage is None:
        return
    noted = {name: getattr(usage, name) for name in USAGE_COUNTS if getattr(usage, name)}
    if usage.model:
        noted["model"] = usage.model
    flow.metadata.setdefault(KEY, {})["usage"] = noted
