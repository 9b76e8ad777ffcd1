"""The install promises: every import is a declared dependency, the lock matches pyproject, and
the wheel is a complete product (its own rules, its addon, no generic top-level module)."""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
import tomllib
import zipfile
from collections.abc import Iterable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
#: Import roots that are this repository's own code.
LOCAL = {"addon", "governance", "tests"}


def normalise(dist: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", dist).lower()


def declared(*groups: str) -> set[str]:
    """Distribution names declared in pyproject: runtime dependencies plus the named extras."""
    specs = list(PYPROJECT["project"]["dependencies"])
    for group in groups:
        specs += PYPROJECT["project"]["optional-dependencies"][group]
    return {normalise(re.split(r"[\s<>=!~;\[]", s, maxsplit=1)[0]) for s in specs}


def _optional(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """Inside `try: ... except ImportError` (an alternative, such as `compression.zstd`)."""
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.Try) and any(
            isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError")
            for h in node.handlers
        ):
            return True
    return False


def imported_roots(files: Iterable[Path]) -> dict[str, list[str]]:
    """Top-level module -> where it is imported, for every absolute import in `files`, except
    optional imports of modules this interpreter does not have."""
    found: dict[str, list[str]] = {}
    for path in files:
        tree = ast.parse(path.read_text(), str(path))
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                root = name.split(".")[0]
                if _optional(node, parents) and importlib.util.find_spec(root) is None:
                    continue
                found.setdefault(name if root == "backports" else root, []).append(f"{path}:{node.lineno}")
    return found


def undeclared(files: Iterable[Path], allowed: set[str]) -> dict[str, list[str]]:
    """Imports that no declared distribution provides: `{module: [file:line, ...]}`."""
    providers = importlib.metadata.packages_distributions()
    problems: dict[str, list[str]] = {}
    for module, places in imported_roots(files).items():
        root = module.split(".")[0]
        if root in LOCAL or root in sys.stdlib_module_names or root == "__future__":
            continue
        dists = {normalise(d) for d in providers.get(root, [])}
        if module.startswith("backports."):  # a namespace shared by several distributions
            dists = {normalise(module)}
        if not dists & allowed:
            problems[module] = places
    return problems


def source_files() -> list[Path]:
    return [REPO / "addon.py", *sorted((REPO / "governance").rglob("*.py"))]


def test_runtime_code_imports_only_runtime_dependencies():
    assert undeclared(source_files(), declared()) == {}


def test_tests_import_only_declared_dependencies():
    # The agent CLIs' npm packages (tests/clients/node_modules) are not Python of ours.
    ours = [p for p in (REPO / "tests").rglob("*.py") if "node_modules" not in p.parts]
    assert undeclared(sorted(ours), declared("dev")) == {}


def test_an_undeclared_import_is_caught(tmp_path):
    # `idna` is installed (httpx needs it) but declared nowhere: importing it must be flagged,
    # even though the import works here.
    probe = tmp_path / "test_probe.py"
    probe.write_text(
        "import json\nimport idna\nimport yaml\n\n"
        "try:\n    import nowhere_at_all\nexcept ImportError:\n    pass\n"
    )
    assert list(undeclared([probe], declared("dev"))) == ["idna"]


def test_lock_pins_every_dependency_and_matches_pyproject():
    lock = tomllib.loads((REPO / "uv.lock").read_text())
    packages = {normalise(p["name"]): p for p in lock["package"]}
    root = packages["spendfuse"]
    in_lock = {normalise(d["name"]) for d in root["dependencies"]}
    in_lock |= {normalise(d["name"]) for d in root["optional-dependencies"]["dev"]}
    assert declared("dev") <= in_lock
    for name, pkg in packages.items():
        if name == "spendfuse":
            continue
        assert pkg.get("version"), name
        artifacts = [*pkg.get("wheels", []), *([pkg["sdist"]] if "sdist" in pkg else [])]
        assert artifacts and all(a["hash"].startswith("sha256:") for a in artifacts), name


def test_installed_versions_are_the_locked_ones():
    lock = tomllib.loads((REPO / "uv.lock").read_text())
    pinned: dict[str, set[str]] = {}
    for p in lock["package"]:
        pinned.setdefault(normalise(p["name"]), set()).add(p["version"])
    for name in sorted(declared("dev")):
        assert importlib.metadata.version(name) in pinned[name], name


def test_scripts_install_from_the_lock_only():
    setup = (REPO / "scripts" / "_python.sh").read_text()
    assert "sync --locked" in setup and "pip install -e" not in setup
    assert "--require-hashes" in setup
    ci = (REPO / ".ci" / "run").read_text()
    assert "UV_PROJECT_ENVIRONMENT" in ci and "UV_CACHE_DIR" in ci and "ruff" in ci


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    hatchling = Path(sys.executable).parent / "hatchling"
    subprocess.run(
        [str(hatchling), "build", "-t", "wheel", "-d", str(out)], cwd=REPO, check=True, capture_output=True
    )
    [built] = out.glob("spendfuse-*.whl")
    return built


def test_wheel_holds_the_rules_and_the_addon_and_no_generic_module(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.startswith("spendfuse-")}
    assert top == {"governance"}
    shipped = {n.removeprefix("governance/_shipped/") for n in names if n.startswith("governance/_shipped/")}
    repo_rules = {f"rules/{p.name}" for p in (REPO / "rules").iterdir() if p.is_file()}
    assert repo_rules <= shipped and "addon.py" in shipped
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "spendfuse = governance.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new virtual environment with the wheel installed by pip, not editable. Its dependencies
    come from this environment's site-packages (a `.pth` that sorts after the wheel's files), so
    the test needs no network."""
    venv = tmp_path_factory.mktemp("installed") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-index",
            "--disable-pip-version-check",
            str(wheel),
        ],
        check=True,
        capture_output=True,
    )
    [site] = (venv / "lib").glob("python3*/site-packages")
    here = [p for p in sys.path if p.endswith("site-packages")]
    (site / "zz_spendfuse_test_deps.pth").write_text("\n".join(here) + "\n")
    return venv


def _isolated_env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPENDFUSE_", "PYTHON"))}
    env["HOME"] = str(tmp)
    return env


def test_installed_package_runs_from_its_own_files(installed, tmp_path):
    probe = "import governance, json; print(json.dumps([governance.__file__, str(governance.DEFAULT_RULES)]))"
    out = subprocess.run(
        [str(installed / "bin" / "python"), "-c", probe],
        cwd=tmp_path,
        check=True,
        capture_output=True,
        text=True,
        env=_isolated_env(tmp_path),
    ).stdout
    module, rules = json.loads(out)
    assert module.startswith(str(installed)) and rules.startswith(str(installed)) and Path(rules).is_file()


def test_installed_schema_check_passes(installed, tmp_path):
    result = subprocess.run(
        [str(installed / "bin" / "spendfuse"), "schema", "--check"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=_isolated_env(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    assert str(installed) in result.stdout


def test_installed_run_starts_with_the_shipped_rules(installed, tmp_path):
    portfile = tmp_path / "port.json"
    harness = REPO / "tests" / "support" / "harness_addon.py"
    cmd = [
        str(installed / "bin" / "spendfuse"),
        "run",
        "--listen-host",
        "127.0.0.1",
        "--listen-port",
        "0",
        "--set",
        f"confdir={tmp_path / 'conf'}",
        "--set",
        f"spendfuse_db={tmp_path / 'ledger.sqlite'}",
        "-s",
        str(harness),
        "--set",
        f"harness_portfile={portfile}",
    ]
    proc = subprocess.Popen(
        cmd,
        cwd=tmp_path,
        env=_isolated_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        for _ in range(600):
            if portfile.exists() or proc.poll() is not None:
                break
            time.sleep(0.05)  # waiting for a process to start, not for time to pass
        assert portfile.exists(), proc.communicate(timeout=10)[0] if proc.poll() is not None else "no port"
        assert json.loads(portfile.read_text())["port"] > 0
    finally:
        proc.terminate()
        log = proc.communicate(timeout=15)[0]
    assert "_shipped/rules/default.yaml" in log and "global $1.00" in log, log
