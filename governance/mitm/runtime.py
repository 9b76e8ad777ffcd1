"""What runs the engine: configuration from the options, the ledger thread every database call
runs on (so the event loop never blocks on SQLite), the rules watcher, the reaper and the
settling of what is in flight at a clean shutdown."""

import asyncio
import logging
import time
from collections.abc import Iterable
from pathlib import Path

from mitmproxy import ctx, exceptions
from mitmproxy.utils import asyncio_utils

from governance import gate, lifecycle, tokens
from governance.decisions import Record
from governance.engine import Engine
from governance.errors import LedgerUnavailable, PolicyError
from governance.ledger_thread import LedgerThread
from governance.mitm import options, translate
from governance.mitm.observing import Observing
from governance.mitm.state import Pending
from governance.mitm.watcher import RulesWatcher, rules_signature
from governance.observe import Observers
from governance.policy import Policy
from governance.types import usd

logger = logging.getLogger("spendfuse")

# How often holds left by a crash are looked for.
REAP_SECONDS = 300


class Runtime:
    """The engine in force (None until configured, with `config_error` saying why) and the
    ledger thread it records through. `__init__` does no I/O: the ledger opens in `configure`."""

    def __init__(self) -> None:
        self.engine: Engine | None = None
        self.config_error: str | None = "not configured yet"
        self._worker: LedgerThread | None = None
        self.watcher = RulesWatcher(self.reload_rules)
        self.observing = Observing()  # where decisions are shown besides their flows
        self._reaper: asyncio.Task | None = None
        self._forcing = False

    @property
    def observers(self) -> Observers:
        return self.observing.observers

    def ledger_thread(self) -> LedgerThread:
        if self._worker is None:
            self._worker = LedgerThread(on_idle=self._idle)
        return self._worker

    def _idle(self) -> None:
        """On the ledger thread, when nothing is queued: housekeeping off the requests' path."""
        if self.engine is not None:
            self.engine.housekeep()

    async def on_ledger(self, fn, *args):  # type: ignore[no-untyped-def]
        metrics = self.observers.metrics
        if metrics is None:
            return await self.ledger_thread().call(fn, *args)
        start = time.perf_counter()
        try:
            return await self.ledger_thread().call(fn, *args)
        finally:
            op = getattr(getattr(fn, "func", fn), "__name__", "")  # a partial names its function
            metrics.ledger_seconds(op, time.perf_counter() - start)

    def configure(self, updated: set[str]) -> None:
        if getattr(ctx.options, "stream_large_bodies", None):
            # A streamed request reaches `request` with no body, after it was forwarded.
            raise exceptions.OptionsError(
                "spendfuse refuses to run with stream_large_bodies set: streamed requests are "
                "forwarded before they can be checked. Unset it (use body_size_limit to cap memory)."
            )
        if any(name.startswith("spendfuse_") for name in updated) or self.engine is None:
            self._configure_engine()
        assert self.engine is not None
        self.observing.configure()
        if self.engine.keyring and getattr(ctx.options, "ssl_insecure", False):
            raise exceptions.OptionsError(
                "spendfuse refuses ssl_insecure with custody keys (credentials:): a key must only "
                "reach a provider whose certificate was verified. Unset ssl_insecure."
            )
        problems = gate.exempted_llm_hosts(
            self.engine.hosts,
            ignore_hosts=getattr(ctx.options, "ignore_hosts", ()) or (),
            allow_hosts=getattr(ctx.options, "allow_hosts", ()) or (),
            tcp_hosts=getattr(ctx.options, "tcp_hosts", ()) or (),
            udp_hosts=getattr(ctx.options, "udp_hosts", ()) or (),
        )
        if problems:
            shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
            raise exceptions.OptionsError(
                f"spendfuse refuses options that exempt LLM hosts from interception (their traffic would "
                f"pass unmetered): {shown}"
            )
        self._force_safe_options()

    def _force_safe_options(self) -> None:
        """Forced after validation, so a bad option fails before this re-enters:
        - eager connection_strategy connects upstream before the request hook runs, even for
          refused requests;
        - rawtcp relays bytes that are neither TLS nor HTTP to wherever the client asked, and
          the bytes of a TLS handshake split or dressed up to look like neither are exactly that."""
        forced = {}
        if getattr(ctx.options, "connection_strategy", "lazy") != "lazy":
            forced["connection_strategy"] = "lazy"
        if getattr(ctx.options, "rawtcp", False):
            forced["rawtcp"] = False
        if forced and not self._forcing:
            self._forcing = True
            try:
                ctx.options.update(**forced)
            finally:
                self._forcing = False

    def _configure_engine(self) -> None:
        o = ctx.options
        dry_run = options.parse_bool(o.spendfuse_dry_run, "spendfuse_dry_run")
        try:
            rules, warnings = options.load_rules()
            keyring = options.load_keyring(rules)
        except PolicyError as e:
            raise exceptions.OptionsError(f"spendfuse_rules: {e}") from e
        for w in warnings:
            logger.warning("spendfuse: %s: %s: %s", o.spendfuse_rules, w.where(), w.message)
        try:
            ledger, salt = self.ledger_thread().call_blocking(
                lifecycle.open_ledger, lifecycle.ledger_path(o.spendfuse_db), Path(o.confdir).expanduser()
            )
        except LedgerUnavailable as e:
            raise exceptions.OptionsError(f"spendfuse_db: {e}") from e
        try:
            tokens.preload()
        except Exception as e:
            raise exceptions.OptionsError(f"spendfuse cannot load its tokenizer encodings: {e}") from e
        old, self.engine = self.engine, Engine(rules, ledger, dry_run=dry_run, salt=salt, keyring=keyring)
        self.watcher.seen = rules_signature(o.spendfuse_rules)
        self.config_error = None
        if old is not None:
            self.ledger_thread().submit(old.close)
        caps = ", ".join(f"{b.id} {usd(b.max_usd)} ({b.reset})" for b in rules.budgets) or "none"
        logger.info(
            "spendfuse: rules %s, ledger %s, budgets: %s, %d rate limit(s), %d key(s), custody: %s, "
            "max multiplier: %s%s",
            o.spendfuse_rules,
            ledger.path,
            caps,
            len(rules.rate_limits),
            len(rules.keys),
            custody_summary(rules),
            rules.max_multiplier or "off",
            ", DRY RUN" if dry_run else "",
        )

    def running(self) -> None:
        typos = options.unknown_options()
        if typos:
            # Logged at error level during startup, so mitmdump exits instead of running unenforced.
            logger.error(
                "spendfuse: unknown option(s) %s; known: %s",
                ", ".join(typos),
                ", ".join(s.name for s in options.OPTIONS),
            )
        if self.engine is not None and self._reaper is None:
            self._reaper = asyncio_utils.create_task(
                self._reap_forever(), name="spendfuse reaper", keep_ref=True
            )
        if self.engine is not None:
            self.watcher.start()

    def reload_rules(self) -> None:
        """Load the rules file again. A good file takes effect at once, for every request not yet
        admitted; a bad one is refused with every problem logged, and the old rules stay."""
        engine = self.engine
        if engine is None:
            return
        path = ctx.options.spendfuse_rules
        self.watcher.seen = rules_signature(path)
        try:
            rules, warnings = options.load_rules()
            keyring = options.load_keyring(rules)
        except (PolicyError, exceptions.OptionsError) as e:
            logger.error(
                "spendfuse: the edited rules were NOT applied; the previous rules stay in force: %s", e
            )
            self.observing.reloaded(False)
            return
        for w in warnings:
            logger.warning("spendfuse: %s: %s: %s", path, w.where(), w.message)
        # Same ledger, same counters: a changed limit applies to the spend already recorded.
        self.engine = Engine(rules, engine.ledger, dry_run=engine.dry_run, salt=engine.salt, keyring=keyring)
        logger.info("spendfuse: rules %s reloaded", path)
        self.observing.reloaded(True)

    async def _reap_forever(self) -> None:
        while True:
            engine = self.engine
            if engine is not None:
                try:
                    n = await self.on_ledger(engine.reap, translate.now())
                    if n:
                        logger.warning("spendfuse: charged %d stale reservation(s) left by a crash", n)
                        if self.observers:
                            self.observers.emit(Record("reaped", count=n))
                except LedgerUnavailable as e:
                    logger.error("spendfuse: reaping stale reservations failed: %s", e)
            await asyncio.sleep(REAP_SECONDS)

    def done(self, in_flight: Iterable[Pending]) -> None:
        """Stop: settle what is in flight, close the ledger and its thread."""
        if self._reaper is not None:
            self._reaper.cancel()
        self.watcher.stop()
        if self._worker is not None:
            if self.engine is not None:
                self._settle_in_flight(in_flight)
                self._worker.submit(self.engine.close)
            self._worker.close()
            self._worker = None
        self.observing.close()

    def _settle_in_flight(self, in_flight: Iterable[Pending]) -> None:
        """A clean shutdown settles every flow still in flight, instead of leaving holds for the
        next run to charge in full: see `Engine.read_shutdown`."""
        assert self._worker is not None
        for p in in_flight:
            tapped = p.tap.usage if p.tap is not None else None
            s = p.engine.read_shutdown(p.info, tapped, reached=translate.reached_upstream(p.flow))
            try:
                self._worker.call_blocking(p.engine.settle, s, translate.now())
            except LedgerUnavailable as e:
                logger.error("spendfuse: could not settle %s at shutdown (the reaper will): %s", p.flow.id, e)


def custody_summary(rules: Policy) -> str:
    """The custody setting and the credentials' ids (never their keys), for the start-up line."""
    ids = ", ".join(f"{c.id} ({c.provider})" for c in rules.credentials) or "no credentials"
    return f"{rules.custody}, {ids}"
