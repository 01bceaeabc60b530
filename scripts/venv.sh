#!/usr/bin/env bash
# Build or top up a virtual environment from a lock file, printing one line per step.
#
#   scripts/venv.sh VENV LOCK        install LOCK's pinned, hashed wheels, then the project
#   scripts/venv.sh VENV --latest    the newest releases pyproject.toml's ranges allow
#
# pip's own chatter goes to VENV/install.log; on a failure its tail is shown. A venv made
# from an older dev.lock is rebuilt, never patched, so a lock change cannot leave strays.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=$1 lock=$2
py=${PY:-python3}
log="$venv/install.log"
fail() {
  echo "setup: FAILED, last lines of $log:" >&2
  tail -n 25 "$log" >&2
  exit 1
}
master_hash=$(sha256sum requirements/dev.lock | cut -c1-16)
if [[ -d "$venv" && "$lock" != --latest && "$(cat "$venv/.lock-hash" 2>/dev/null)" != "$master_hash" ]]; then
  echo "setup: $venv was built from another lock; rebuilding it"
  rm -rf "$venv"
fi
if [[ ! -x "$venv/bin/python" ]]; then
  "$py" -m venv "$venv"
fi
pip=("$venv/bin/pip" --disable-pip-version-check --no-input)
if [[ "$lock" == --latest ]]; then
  echo "setup: installing the newest allowed releases into $venv (log: $log)"
  "${pip[@]}" install --upgrade -e ".[dev]" >>"$log" 2>&1 || fail
else
  echo "setup: installing $lock into $venv (pinned and hashed; log: $log)"
  "${pip[@]}" install --require-hashes --no-deps -r "$lock" >>"$log" 2>&1 || fail
  # The project itself, editable and without dependencies: everything it needs came from
  # the lock, and --no-build-isolation builds it with the lock's setuptools.
  "${pip[@]}" install --no-deps --no-build-isolation -e . >>"$log" 2>&1 || fail
  echo "$master_hash" >"$venv/.lock-hash"
fi
"${pip[@]}" check >>"$log" 2>&1 || fail
echo "setup: $venv ready ($("$venv/bin/python" -c 'import importlib.metadata as m; print(len(list(m.distributions())))') packages)"
