#!/usr/bin/env bash
# Runs the whole suite; pytest's exit code 5 (no tests collected) is a failure.
set -uo pipefail
py=${1:-.venv/bin/python}
"$py" -m pytest -ra --durations=25 "${@:2}"
rc=$?
if [ "$rc" -eq 5 ]; then
    echo "run-tests: pytest collected no tests" >&2
    exit 1
fi
exit "$rc"
