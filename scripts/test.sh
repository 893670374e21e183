#!/usr/bin/env bash
# Sets up the test environments and runs the whole test suite:
#   1. a Docker engine and the test image (scripts/docker-engine.sh): required when CI=true;
#      elsewhere the Docker tests are skipped, with the reason, if they cannot be had;
#   2. .venv         - the newest DSPy 3.x: every test;
#   3. .venv-dspy313 - DSPy 3.1.3 (RLM takes an interpreter instance): the DSPy end-to-end tests.
# Extra arguments go to the first pytest run. PYTHON selects the base interpreter (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
export LITELLM_LOCAL_MODEL_COST_MAP=True
export PIP_DISABLE_PIP_VERSION_CHECK=1
export SANDBOXKIT_DOCKER_IMAGE="${SANDBOXKIT_DOCKER_IMAGE:-sandboxkit-test/python:bookworm}"

echo "== Docker engine and test image"
if ! bash scripts/docker-engine.sh; then
    if [ "${CI:-}" = "true" ]; then
        echo "CI needs a Docker engine and the test image; see the messages above." >&2
        exit 1
    fi
    export SANDBOXKIT_TEST_DOCKER_UNAVAILABLE="no Docker engine or test image here (scripts/docker-engine.sh failed)"
    echo "Docker tests will be skipped: $SANDBOXKIT_TEST_DOCKER_UNAVAILABLE"
fi

setup_env() {  # setup_env DIR [extra pip requirement]
    local dir="$1"; shift
    if [ ! -x "$dir/bin/python" ]; then
        echo "== creating $dir"
        "$PYTHON" -m venv "$dir"
    fi
    echo "== installing sandboxkit into $dir"
    "$dir/bin/python" -m pip install -q --upgrade pip
    "$dir/bin/python" -m pip install -q -e '.[test,docker,modal]' "$@"
}

setup_env .venv
echo "== tests (newest DSPy: $(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("dspy"))'))"
.venv/bin/python -m pytest "$@"

setup_env .venv-dspy313 'dspy==3.1.3'
echo "== DSPy end-to-end tests on DSPy $(.venv-dspy313/bin/python -c 'import importlib.metadata as m; print(m.version("dspy"))')"
.venv-dspy313/bin/python -m pytest -p no:cacheprovider tests/test_dspy_e2e_subprocess.py
