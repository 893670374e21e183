#!/usr/bin/env bash
# Sets up the test environments and runs the whole test suite:
#   1. .venv        - the newest DSPy 3.x: every test;
#   2. .venv-dspy313 - DSPy 3.1.3 (RLM takes an interpreter instance): the DSPy end-to-end tests.
# Extra arguments go to the first pytest run. PYTHON selects the base interpreter (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
export LITELLM_LOCAL_MODEL_COST_MAP=True
export PIP_DISABLE_PIP_VERSION_CHECK=1

setup_env() {  # setup_env DIR [extra pip requirement]
    local dir="$1"; shift
    if [ ! -x "$dir/bin/python" ]; then
        echo "== creating $dir"
        "$PYTHON" -m venv "$dir"
    fi
    echo "== installing sandboxkit into $dir"
    "$dir/bin/python" -m pip install -q --upgrade pip
    "$dir/bin/python" -m pip install -q -e '.[test]' "$@"
}

setup_env .venv
echo "== tests (newest DSPy: $(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("dspy"))'))"
.venv/bin/python -m pytest "$@"

setup_env .venv-dspy313 'dspy==3.1.3'
echo "== DSPy end-to-end tests on DSPy $(.venv-dspy313/bin/python -c 'import importlib.metadata as m; print(m.version("dspy"))')"
.venv-dspy313/bin/python -m pytest -p no:cacheprovider tests/test_dspy_e2e_subprocess.py
