#!/usr/bin/env bash
# Set up .venv and run the test suite (default tier: CPU, no slow or GPU tests). Extra arguments go to pytest,
# e.g. `bash scripts/run_tests.sh -m slow` for the slow tier.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh || exit 1
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
    echo "pytest collected no tests (exit 5): the selection $* matched nothing" >&2
    exit 1
fi
exit "$rc"
