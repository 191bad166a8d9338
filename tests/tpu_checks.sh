#!/usr/bin/env bash
# The TPU compile checks: the tests marked `tpu` (tests/test_tpu.py), in a Python 3.12 venv
# with the [tpu] extra (jax[tpu]: libtpu compiles for TPU topologies on this CPU machine).
# The venv is made once in $SSC_JAX_TPU_VENV (default .venv-tpu) and reused. --slow: also
# the tests marked slow (the TPU benchmark scripts).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${SSC_JAX_TPU_VENV:-.venv-tpu}
if [ ! -x "$venv/bin/python" ]; then
  python312=$(PYENV_VERSION=3.12.1 command -v python3.12 || true)
  if [ -z "$python312" ] || ! PYENV_VERSION=3.12.1 "$python312" --version >/dev/null 2>&1; then
    echo "tpu_checks: needs Python 3.12 (python3.12, or pyenv's 3.12.1) for jax[tpu]" >&2
    exit 1
  fi
  PYENV_VERSION=3.12.1 "$python312" -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q -e ".[tpu]" "pytest>=8" "pytest-xdist>=3.5"
marker="tpu and not slow"
if [ "${1:-}" = "--slow" ]; then marker="tpu"; fi  # also the TPU benchmark scripts' check
"$venv/bin/python" -m pytest -q -p no:cacheprovider -n 2 -m "$marker" tests/test_tpu.py
