# Sourced by scripts/run, scripts/test and scripts/bench.
# Finds the newest working CPython >= 3.12 (3.13 preferred), creates .venv on first use,
# and (re)installs the project whenever pyproject.toml or the wanted extras change.

spendfuse_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

_works() {  # $1: interpreter path; true if it runs, is >= 3.12 and has venv
  [ -n "$1" ] && [ -x "$1" ] || command -v "$1" >/dev/null 2>&1 || return 1
  "$1" -c 'import sys, venv, ensurepip; sys.exit(0 if sys.version_info >= (3, 12) else 1)' >/dev/null 2>&1
}

_version_of() { "$1" -c 'import sys; print("%d.%02d" % sys.version_info[:2])' 2>/dev/null; }

find_python() {
  local candidates=() c best="" best_v="" v
  # A preferred interpreter can be forced.
  if [ -n "${SPENDFUSE_PYTHON:-}" ]; then
    if _works "$SPENDFUSE_PYTHON"; then echo "$SPENDFUSE_PYTHON"; return 0; fi
    echo "SPENDFUSE_PYTHON=$SPENDFUSE_PYTHON is not a working Python >= 3.12" >&2; return 1
  fi
  for c in python3.13 python3.14 python3.12 python3; do
    candidates+=("$(command -v "$c" 2>/dev/null)")
  done
  # pyenv shims fail unless pyenv selects the version, so look at its installs directly.
  if command -v pyenv >/dev/null 2>&1; then
    local root; root="$(pyenv root 2>/dev/null)"
    for c in "$root"/versions/3.1[2-9]*/bin/python3; do candidates+=("$c"); done
  fi
  for c in /usr/local/bin/python3.1[2-9] /usr/bin/python3.1[2-9]; do candidates+=("$c"); done
  for c in "${candidates[@]}"; do
    _works "$c" || continue
    v="$(_version_of "$c")"
    if [ "$v" = "3.13" ]; then echo "$c"; return 0; fi   # preferred
    if [ -z "$best_v" ] || [[ "$v" > "$best_v" ]]; then best="$c"; best_v="$v"; fi
  done
  if [ -n "$best" ]; then echo "$best"; return 0; fi
  echo "spendfuse needs Python >= 3.12 (mitmproxy 12 does), preferably 3.13, and none was found." >&2
  echo "Install one (e.g. 'pyenv install 3.13') or set SPENDFUSE_PYTHON=/path/to/python3.13." >&2
  return 1
}

ensure_venv() {  # $1: extras spec: "" (run) or "[dev]" (test, bench)
  local extras="$1" venv="$spendfuse_root/.venv" stamp hash py
  hash="$(sha256sum < "$spendfuse_root/pyproject.toml" | cut -c1-16)"
  stamp="$venv/.spendfuse-installed"
  # The stamp holds "<pyproject hash><extras>"; a [dev] install also satisfies a plain one.
  if [ -x "$venv/bin/python" ] && [ -f "$stamp" ]; then
    if grep -qxF -- "$hash$extras" "$stamp" || { [ -z "$extras" ] && grep -q "^$hash" "$stamp"; }; then
      return 0
    fi
  fi
  if [ ! -x "$venv/bin/python" ]; then
    py="$(find_python)" || return 1
    echo "spendfuse: creating .venv with $py (Python $(_version_of "$py"))" >&2
    "$py" -m venv "$venv" || return 1
  fi
  echo "spendfuse: installing the project into .venv" >&2
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "$spendfuse_root$extras" || {
    echo "spendfuse: pip install failed; see the output above" >&2; return 1; }
  echo "$hash$extras" > "$stamp"
}
