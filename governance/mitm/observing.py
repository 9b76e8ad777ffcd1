"""The sinks decisions go to besides their flows, set up from the options: the JSON decision
log (`spendfuse_log_format=json`, `spendfuse_log_file`) and the metrics endpoint
(`spendfuse_metrics`, `spendfuse_metrics_token`). Off by default: then `Observers` is empty and
nothing is built for it. A malformed value, a log file that cannot be opened, a metrics address
beyond loopback without a token, or one that cannot be bound stops start-up."""

from __future__ import annotations

import logging

from mitmproxy import ctx, exceptions

from governance.decision_log import DecisionLog
from governance.mitm import translate
from governance.observe import Observers

logger = logging.getLogger("spendfuse")

LOG_OPTIONS = ("spendfuse_log_format", "spendfuse_log_file")
METRICS_OPTIONS = ("spendfuse_metrics", "spendfuse_metrics_token")


class Observing:
    """Owns the sinks in force, and closes them when their options change or the proxy stops."""

    def __init__(self) -> None:
        self.observers = Observers()
        self._log: DecisionLog | None = None
        self._metrics = None  # (Metrics, MetricsServer) while the endpoint is on
        self._seen: dict[str, tuple[str, ...]] = {}

    def configure(self) -> Observers:
        """The sinks the options ask for (the same ones while their options are unchanged)."""
        o = ctx.options
        log_opts = tuple(getattr(o, name) for name in LOG_OPTIONS)
        metrics_opts = tuple(getattr(o, name) for name in METRICS_OPTIONS)
        if self._seen.get("log") != log_opts:
            self._configure_log(o.spendfuse_log_format, o.spendfuse_log_file)
            self._seen["log"] = log_opts
        if self._seen.get("metrics") != metrics_opts:
            self._configure_metrics(o.spendfuse_metrics, o.spendfuse_metrics_token)
            self._seen["metrics"] = metrics_opts
        metrics = self._metrics[0] if self._metrics else None
        sinks = [s for s in (self._log, metrics) if s is not None]
        self.observers = Observers(sinks, metrics)
        return self.observers

    def _configure_log(self, format_option: str, target: str) -> None:
        fmt = format_option.strip().lower()
        if fmt not in ("human", "json", ""):
            raise exceptions.OptionsError(
                f"spendfuse_log_format must be human or json, not {format_option!r}"
            )
        log = None
        if fmt == "json":
            try:
                log = DecisionLog.open(target.strip(), translate.now)
            except OSError as e:
                raise exceptions.OptionsError(f"spendfuse_log_file: cannot open {target!r}: {e}") from e
        self._close_log()
        self._log = log

    def _configure_metrics(self, address: str, token: str) -> None:
        started = None
        if address.strip():
            # Imported only when asked for: a proxy without metrics never loads prometheus-client.
            from governance.metrics import Metrics
            from governance.metrics_server import MetricsServer, listen_address

            try:
                host, port = listen_address(address, token.strip())
            except ValueError as e:
                raise exceptions.OptionsError(f"spendfuse_metrics: {e}") from e
            self._close_metrics()  # the old endpoint may hold the port
            metrics = Metrics()
            try:
                server = MetricsServer(metrics.registry, host, port, token.strip())
            except OSError as e:
                raise exceptions.OptionsError(
                    f"spendfuse_metrics: cannot listen on {host}:{port}: {e}"
                ) from e
            started = (metrics, server)
            logger.info(
                "spendfuse: metrics on http://%s:%d/metrics%s",
                host,
                server.port,
                " (bearer token required)" if token.strip() else "",
            )
        self._close_metrics()
        self._metrics = started

    def reloaded(self, ok: bool) -> None:
        if self.observers.metrics is not None:
            self.observers.metrics.reloaded(ok)

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def _close_metrics(self) -> None:
        if self._metrics is not None:
            self._metrics[1].stop()
            self._metrics = None

    def close(self) -> None:
        self._close_log()
        self._close_metrics()
        self._seen.clear()
        self.observers = Observers()
