#!/usr/bin/env bash
# The CUDA checks, as one command, on a machine with onnxruntime-gpu and an NVIDIA GPU:
#
#     bash benchmarks/cuda_check.sh [OUTPUT_FOLDER]      # default: cuda-check/
#
# 1. the whole test suite with the CUDA provider available (tests marked
#    "cuda" compare CUDA features with CPU ones to 1e-4, all layers, gradient,
#    activation and probabilities; the others pin the CPU provider);
# 2. benchmarks/speed.py --providers cuda: CUDA vs CPU differences with TF32
#    off and on, host overhead, extraction against onnxruntime forward-only
#    and against torch autograd on the same device.
# Everything printed is also written to OUTPUT_FOLDER.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-cuda-check}
mkdir -p "$out"
python -c "import onnxruntime as o, sys; p = o.get_available_providers(); print(o.__version__, p); \
sys.exit(0 if 'CUDAExecutionProvider' in p else 'this onnxruntime has no CUDA provider')" | tee "$out/providers.txt"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee -a "$out/providers.txt" || true
python -m pytest -q -p no:cacheprovider -x 2>&1 | tee "$out/pytest.txt"
python -m pytest -q -p no:cacheprovider -m cuda -rs 2>&1 | tee "$out/pytest-cuda.txt"
PYTHONUNBUFFERED=1 python benchmarks/speed.py --providers cuda --only exactness host-overhead extraction \
    --throughput-images 4096 --batch-size 128 2>&1 | tee "$out/speed-cuda.txt"
