#!/usr/bin/env sh
# Build the HTML documentation with warnings as errors; every gallery example
# runs (offline, on the embedded model). Installs nothing: run
#   pip install ".[docs]"
# first. Output: docs/_build/html/index.html.
set -eu
cd "$(dirname "$0")/.."
exec python -m sphinx -W --keep-going -b html docs docs/_build/html "$@"
