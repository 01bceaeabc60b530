#!/usr/bin/env bash
# Refresh requirements/*.lock from pyproject.toml's ranges (make lock).
#
# dev.lock resolves every extra at once; eval.lock and serve.lock are then resolved under
# dev.lock as a constraint, so each is a subset at the same versions.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP_TOOLS_VERSION=7.6.2
tool_env="${KFAAR_LOCK_TOOL_ENV:-.venv-lock}"
if [[ ! -x "$tool_env/bin/pip-compile" ]]; then
  echo "lock: setting up pip-tools $PIP_TOOLS_VERSION in $tool_env"
  python3 -m venv "$tool_env"
  "$tool_env/bin/pip" install -q --disable-pip-version-check "pip-tools==$PIP_TOOLS_VERSION" \
    2> >(grep -v "is ignored" >&2)
fi
compile() {  # compile OUT EXTRA [constraint]
  local out=$1 extra=$2; shift 2
  echo "lock: resolving $out (extra: ${extra:-none})"
  "$tool_env/bin/pip-compile" -q --generate-hashes --allow-unsafe --strip-extras \
    --no-emit-index-url --no-emit-find-links --no-emit-trusted-host \
    ${extra:+--extra "$extra"} "$@" -o "$out" pyproject.toml \
    2> >(grep -v -e "is ignored" -e "may be rejected by pip" >&2)
  # The project itself is installed editable with --no-deps after the lock; pip-compile
  # records it as a file:// requirement of this checkout, which pins a machine's path.
  python3 - "$out" <<'PY'
import re, sys
path = sys.argv[1]
text = open(path).read()
text = re.sub(r"(?m)^# WARNING: pip install will require.*\n(?:#.*\n)*", "", text)
text = re.sub(r"(?m)^kfaar @ file://.*\n(?:    #.*\n)*", "", text)
text = re.sub(r"--output-file=\S+ ", "", text)
open(path, "w").write(text)
PY
}
compile requirements/dev.lock dev "$@"
compile requirements/eval.lock eval -c requirements/dev.lock
compile requirements/serve.lock postgres -c requirements/dev.lock
echo "lock: done; run make test before committing"
