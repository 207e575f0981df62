#!/usr/bin/env bash
# The test venv: Debian's Python (its sqlite3 module can load extensions; some other Pythons
# are built without that) plus the packages in tests/python/requirements.txt. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
requirements=tests/python/requirements.txt
stamp=.venv/.requirements.sha256
# It includes scripts/quantize-requirements.txt: both files make the stamp.
want=$(cat "$requirements" scripts/quantize-requirements.txt | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then exit 0; fi
[ -x .venv/bin/python ] || /usr/bin/python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r "$requirements"
echo "$want" > "$stamp"
