"""The sinks decisions go to besides their flows, set up from the options: the JSON decision
log (`spendfuse_log_format=json`, `spendfuse_log_file`) and the metrics endpoint
(`spendfuse_metrics`, `spendfuse_metrics_token`). Off by default: then `Observers` is empty and
nothing is built for it. A malformed value, a log file that cannot be opened or a metrics
address that cannot be bound stops start-up."""

from __future__ import annotations

from mitmproxy import ctx, exceptions

from governance.decision_log import DecisionLog
from governance.mitm import translate
from governance.observe import Observers

OPTIONS = ("spendfuse_log_format", "spendfuse_log_file", "spendfuse_metrics", "spendfuse_metrics_token")


class Observing:
    """Owns the sinks in force, and closes them when the options change or the proxy stops."""

    def __init__(self) -> None:
        self.observers = Observers()
        self._log: DecisionLog | None = None
        self._seen: tuple[str, ...] | None = None

    def configure(self) -> Observers:
        """The sinks the options ask for (the same ones while the options are unchanged)."""
        o = ctx.options
        wanted = tuple(getattr(o, name) for name in OPTIONS)
        if wanted == self._seen:
            return self.observers
        fmt = o.spendfuse_log_format.strip().lower()
        if fmt not in ("human", "json", ""):
            raise exceptions.OptionsError(f"spendfuse_log_format must be human or json, not {fmt!r}")
        sinks = []
        log = None
        if fmt == "json":
            try:
                log = DecisionLog.open(o.spendfuse_log_file.strip(), translate.now)
            except OSError as e:
                raise exceptions.OptionsError(
                    f"spendfuse_log_file: cannot open {o.spendfuse_log_file!r}: {e}"
                ) from e
            sinks.append(log)
        self.close()
        self._log, self._seen = log, wanted
        self.observers = Observers(sinks)
        return self.observers

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
        self._seen = None
