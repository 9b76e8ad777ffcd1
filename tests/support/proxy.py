"""Start and stop a real `mitmdump` (or `spendfuse run`) subprocess for end-to-end tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
HARNESS = Path(__file__).with_name("harness_addon.py")


@dataclass
class Proxy:
    process: subprocess.Popen
    port: int
    confdir: Path
    log: Path
    errors: Path  # ERROR records spendfuse logged (the harness writes them)
    ports: dict[str, int] = field(default_factory=dict)  # every listener's port, by mode spec

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ca(self) -> Path:
        return self.confdir / "mitmproxy-ca-cert.pem"

    @property
    def gateway_url(self) -> str:
        """The base of the gateway listener (`spendfuse_gateway`, or a `reverse:` mode)."""
        port = next(p for spec, p in self.ports.items() if spec.startswith("reverse:"))
        return f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def logged_errors(self) -> list[str]:
        """Every ERROR that spendfuse logged so far, one line each."""
        return self.errors.read_text(errors="replace").splitlines() if self.errors.exists() else []


def proxy_command(
    *,
    launcher: bool,
    confdir: Path,
    sets: dict[str, str],
    redirect_port: int | None,
    portfile: Path | None,
    errors: Path | None = None,
    extra: list[str] | None = None,
    bare: bool = False,
    scripts: tuple[Path, ...] = (),
) -> list[str]:
    """`bare`: mitmdump without spendfuse, the baseline it is compared with; `scripts` load
    before the harness (the bench's reference addons)."""
    args = ["--listen-host", "127.0.0.1", "--listen-port", "0", "--set", f"confdir={confdir}"]
    if launcher:
        cmd = [str(BIN / "spendfuse"), "run", *args]
    elif bare:
        cmd = [str(BIN / "mitmdump"), *args]
    else:
        cmd = [str(BIN / "mitmdump"), *args, "-s", str(REPO / "addon.py")]
    for script in scripts:
        cmd += ["-s", str(script)]
    for name, value in sets.items():
        cmd += ["--set", f"{name}={value}"]
    cmd += ["-s", str(HARNESS)]
    if portfile is not None:
        cmd += ["--set", f"harness_portfile={portfile}"]
    if errors is not None:
        cmd += ["--set", f"harness_errors={errors}"]
    if redirect_port is not None:
        cmd += ["--set", f"harness_redirect=127.0.0.1:{redirect_port}"]
    return cmd + (extra or [])


def start_proxy(
    workdir: Path,
    *,
    confdir: Path,
    sets: dict[str, str],
    redirect_port: int | None,
    launcher: bool = False,
    bare: bool = False,
    env: dict[str, str] | None = None,
    timeout: float = 30.0,
    scripts: tuple[Path, ...] = (),
    extra: list[str] | None = None,
) -> Proxy:
    """Start a proxy and wait until it listens. Raises with its log if it exits first. `extra`:
    more command-line arguments, after the rest."""
    workdir.mkdir(parents=True, exist_ok=True)
    portfile = workdir / f"port-{time.monotonic_ns()}.json"
    log = portfile.with_suffix(".log")
    errors = portfile.with_suffix(".errors")
    cmd = proxy_command(
        launcher=launcher,
        confdir=confdir,
        sets=sets,
        redirect_port=redirect_port,
        portfile=portfile,
        errors=errors,
        bare=bare,
        scripts=scripts,
        extra=extra,
    )
    full_env = {k: v for k, v in os.environ.items() if not k.upper().endswith("_PROXY")}
    full_env.update(env or {})
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=workdir, env=full_env)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if portfile.exists():
            found = json.loads(portfile.read_text())
            return Proxy(proc, found["port"], confdir, log, errors, found.get("ports", {}))
        if proc.poll() is not None:
            raise RuntimeError(f"proxy exited with {proc.returncode}:\n{log.read_text(errors='replace')}")
        time.sleep(0.02)
    proc.kill()
    raise RuntimeError(f"proxy did not start in {timeout}s:\n{log.read_text(errors='replace')}")
