#!/usr/bin/env sh
# Build the HTML documentation with warnings as errors; every gallery example
# runs (offline, on the embedded model). Installs nothing: run
#   pip install ".[cpu,docs]" && sh docs/build.sh
# (".[gpu,docs]" on a CUDA machine). Output: docs/_build/html/index.html.
set -eu
cd "$(dirname "$0")/.."
python -c "import onnxruntime, sphinx" 2>/dev/null || {
    echo 'docs/build.sh: the examples need onnxruntime and sphinx: pip install ".[cpu,docs]"' >&2
    exit 1
}
exec python -m sphinx -W --keep-going -b html docs docs/_build/html "$@"
