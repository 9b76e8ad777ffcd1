"""The fail-closed launcher (`spendfuse run`) and the CA bundle clients trust the proxy with."""

import os
import sys
from pathlib import Path

from governance.mitm.fuse import SpendFuse


def ensure_ca_bundle(confdir: Path) -> tuple[Path, Path]:
    """Create mitmproxy's CA in `confdir` if missing, and a bundle of certifi's roots plus that
    CA (SSL_CERT_FILE replaces a client's default roots, so it needs both). Returns
    `(bundle, ca_cert)`."""
    import certifi
    from mitmproxy import certs

    confdir.mkdir(parents=True, exist_ok=True)
    certs.CertStore.from_store(str(confdir), "mitmproxy", 2048)
    ca = confdir / "mitmproxy-ca-cert.pem"
    bundle = confdir / "spendfuse-ca-bundle.pem"
    content = Path(certifi.where()).read_text() + "\n" + ca.read_text()
    if not bundle.exists() or bundle.read_text() != content:
        tmp = bundle.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(content)
        os.replace(tmp, bundle)
    return bundle, ca


def gateway_flag(argv: list[str]) -> list[str]:
    """`argv` with `--gateway PORT` (or `--gateway=HOST:PORT`) spelled as the option it stands
    for, `--set spendfuse_gateway=...`, which mitmdump's own parser knows. A `--gateway` with no
    value is left as is, for mitmdump to refuse."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--gateway" and i + 1 < len(argv):
            out += ["--set", f"spendfuse_gateway={argv[i + 1]}"]
            i += 2
            continue
        if arg.startswith("--gateway="):
            out += ["--set", f"spendfuse_gateway={arg.split('=', 1)[1]}"]
        else:
            out.append(arg)
        i += 1
    return out


def launch(argv: list[str]) -> int:
    """`spendfuse run [--gateway [HOST:]PORT] [mitmdump args]`: mitmdump with spendfuse
    registered before the arguments are parsed, so a malformed or misspelled `spendfuse_*`
    option exits non-zero instead of leaving a proxy that forwards without enforcement.
    `--gateway` adds the gateway (base-URL) listener beside the proxy's."""
    from mitmproxy.addons.script import ScriptLoader
    from mitmproxy.tools import cmdline
    from mitmproxy.tools import main as mitm_main
    from mitmproxy.tools.dump import DumpMaster

    class SpendfuseMaster(DumpMaster):
        def __init__(self, options, **kwargs):  # type: ignore[no-untyped-def]
            super().__init__(options, **kwargs)
            addon = SpendFuse()
            self.addons.add(addon)
            # Run before scripts and replay: a `-s` script that rewrites the target host must
            # not turn LLM traffic into traffic spendfuse does not recognise.
            chain = self.addons.chain
            chain.remove(addon)
            first_script = next((i for i, a in enumerate(chain) if isinstance(a, ScriptLoader)), len(chain))
            chain.insert(first_script, addon)

    if any(Path(a).name == "addon.py" for a in argv):
        print("spendfuse run already loads the addon; do not pass -s addon.py", file=sys.stderr)
        return 2

    def extra(args):  # type: ignore[no-untyped-def]
        # The same flow-filter handling as mitmdump's own entry point.
        if args.filter_args:
            v = " ".join(args.filter_args)
            return dict(save_stream_filter=v, readfile_filter=v, dumper_filter=v)
        return {}

    try:
        mitm_main.run(SpendfuseMaster, cmdline.mitmdump, gateway_flag(argv), extra)
    except SystemExit as e:
        return int(e.code or 0) if not isinstance(e.code, str) else 1
    return 0
