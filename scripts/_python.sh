# Sourced by scripts/run, scripts/test, scripts/bench and scripts/lock.
#
# Finds the newest working CPython >= 3.12 (3.13 preferred), bootstraps the one uv release that
# scripts/uv-requirements.txt pins (hash-checked by pip), and builds the environment exactly as
# uv.lock says (`uv sync --locked`): a new release of any dependency cannot change a fresh install.
#
# Environment: SPENDFUSE_PYTHON forces an interpreter; UV_PROJECT_ENVIRONMENT puts the
# environment somewhere other than .venv (CI uses a fresh one); UV_CACHE_DIR is uv's cache.

spendfuse_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
spendfuse_venv="${UV_PROJECT_ENVIRONMENT:-$spendfuse_root/.venv}"
export UV_PROJECT_ENVIRONMENT="$spendfuse_venv"
# Only the interpreters that find_python picks; never one uv downloads.
export UV_PYTHON_DOWNLOADS=never

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

ensure_uv() {  # sets $spendfuse_uv to the pinned uv, installing it into .tools/uv on first use
  local tools="$spendfuse_root/.tools/uv" want py log
  want="$(sed -n 's/^uv==\([^ ]*\).*/\1/p' "$spendfuse_root/scripts/uv-requirements.txt")"
  spendfuse_uv="$tools/bin/uv"
  if [ -x "$spendfuse_uv" ] && [ "$("$spendfuse_uv" --version 2>/dev/null | cut -d' ' -f2)" = "$want" ]; then
    return 0
  fi
  py="$(find_python)" || return 1
  echo "spendfuse: installing uv $want (hash-checked) into .tools/uv" >&2
  rm -rf "$tools"
  log="$(mktemp)"
  if ! { "$py" -m venv "$tools" && "$tools/bin/python" -m pip install --quiet --disable-pip-version-check \
           --require-hashes --only-binary :all: --no-deps -r "$spendfuse_root/scripts/uv-requirements.txt"; } \
         >"$log" 2>&1; then
    cat "$log" >&2; rm -f "$log"
    echo "spendfuse: could not install uv $want; see the output above" >&2
    return 1
  fi
  rm -f "$log"
}

ensure_venv() {  # $1: "" (run) or "dev" (test, bench): builds the environment from uv.lock
  local extras="$1" stamp hash py args=()
  hash="$(cat "$spendfuse_root/uv.lock" "$spendfuse_root/pyproject.toml" | sha256sum | cut -c1-16)"
  stamp="$spendfuse_venv/.spendfuse-installed"
  # The stamp holds "<lock hash> <extras>"; a dev environment also serves `run`.
  if [ -x "$spendfuse_venv/bin/python" ] && [ -f "$stamp" ]; then
    if grep -qxF -- "$hash $extras" "$stamp" || { [ -z "$extras" ] && grep -q "^$hash " "$stamp"; }; then
      return 0
    fi
  fi
  ensure_uv || return 1
  py="$(find_python)" || return 1
  [ -n "$extras" ] && args+=(--extra "$extras")
  echo "spendfuse: building $spendfuse_venv from uv.lock with Python $(_version_of "$py")" >&2
  (cd "$spendfuse_root" && "$spendfuse_uv" sync --locked --quiet --python "$py" "${args[@]}") || {
    echo "spendfuse: 'uv sync --locked' failed. If pyproject.toml changed, refresh the lock with" >&2
    echo "./scripts/lock and commit uv.lock." >&2
    return 1
  }
  echo "$hash $extras" > "$stamp"
}
