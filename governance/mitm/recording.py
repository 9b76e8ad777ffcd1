"""A recorded flow file (`mitmdump -w`) as plain records for `governance.simulation`.

Read with mitmproxy's own `FlowReader`, one flow at a time (a recording of any size is read in
bounded memory). Every HTTP flow becomes a `Recorded`; a flow that cannot be read or translated
becomes an `Unreadable` naming it and why, and a file that breaks off is named where it broke:
nothing is dropped silently. Flows of other protocols (TCP, UDP, DNS) are not LLM requests and are
counted in `Reading.other`.

A flow recorded through a spendfuse proxy has lost what spendfuse strips before forwarding (key
headers, virtual keys), and a streamed body it passed on without keeping; the principal and the
usage that proxy noted in `flow.metadata["spendfuse"]` stand in for them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from mitmproxy import exceptions, http, io

from governance import bodies, wire
from governance.errors import RequestParseError
from governance.mitm import notes, translate
from governance.mitm.state import State
from governance.settlement import ResponseFacts
from governance.simulation import Recorded, Unreadable
from governance.types import USAGE_COUNTS, Usage

#: Keys of the metadata a spendfuse proxy notes on a flow.
METADATA_KEY = notes.KEY


@dataclass
class Reading:
    """A flow file being read: its records, and what was not an HTTP flow."""

    path: Path
    other: int = 0  # flows of other protocols
    read_bytes: int = 0  # how far into the file reading has come (for a progress bar)

    def records(self) -> Iterator[Recorded | Unreadable]:
        """Every HTTP flow of the file, in the order it holds them."""
        with self.path.open("rb") as f:
            yield from self._records(f)

    def _records(self, f: BinaryIO) -> Iterator[Recorded | Unreadable]:
        state = State()
        reader = io.FlowReader(f)
        n = 0
        try:
            for flow in reader.stream():
                n += 1
                self.read_bytes = f.tell()
                if not isinstance(flow, http.HTTPFlow):
                    self.other += 1
                    continue
                try:
                    yield record_of(flow, state)
                except Exception as e:  # noqa: BLE001 - a flow we cannot read is reported, not fatal
                    yield Unreadable(flow.id, f"{type(e).__name__}: {e}")
                finally:
                    state.end(flow.id)
        except exceptions.FlowReadException as e:
            yield Unreadable(f"#{n + 1}", f"the file cannot be read past flow {n}: {e}")


def record_of(flow: http.HTTPFlow, state: State) -> Recorded:
    """One flow as the engine's plain facts."""
    req = flow.request
    noted: Mapping[str, Any] = flow.metadata.get(METADATA_KEY) or {}
    sockname = flow.client_conn.sockname
    port = sockname[1] if sockname and len(sockname) > 1 else None
    started = _time(req.timestamp_start)
    ended = _time(_end_of(flow)) if _end_of(flow) else started
    refused_here = noted.get("decision") == "refused"
    response = None
    if flow.response is not None and not refused_here and flow.is_replay != "response":
        resp = flow.response
        body = (resp.get_content(strict=False) or b"") if resp.raw_content else b""
        response = ResponseFacts(resp.status_code, resp.headers.get("content-type", ""), body)
    return Recorded(
        flow_id=flow.id,
        started=started,
        ended=max(ended, started),
        incoming=translate.incoming(flow, state, keep_host_header=False),
        creds=translate.credentials(flow, state, listen_port=port),
        line=translate.request_line(flow),
        body=_body(req),
        response=response,
        usage=_noted_usage(noted.get("usage")),
        principal=noted.get("principal") if isinstance(noted.get("principal"), str) else None,
        reached=refused_here or translate.reached_upstream(flow),
    )


def _body(req: http.Request) -> object:
    """The decoded JSON body, or the `RequestParseError` saying why it cannot be read."""
    codings = req.headers.get("content-encoding", "").split(",")
    try:
        return wire.decode_json_body(bodies.as_metered(req.raw_content or b"", codings))
    except RequestParseError as e:
        return e


def _end_of(flow: http.HTTPFlow) -> float | None:
    if flow.response is not None and flow.response.timestamp_end:
        return flow.response.timestamp_end
    if flow.error is not None:
        return flow.error.timestamp
    return flow.request.timestamp_end


def _time(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def _noted_usage(noted: object) -> Usage | None:
    """Usage a spendfuse proxy noted on the flow (`{"input_tokens": ..., ...}`), or None."""
    if not isinstance(noted, Mapping):
        return None
    counts = {k: int(noted[k]) for k in USAGE_COUNTS if isinstance(noted.get(k), int)}
    model = noted.get("model")
    return Usage(**counts, model=model if isinstance(model, str) else None)
