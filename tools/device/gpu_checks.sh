#!/usr/bin/env bash
# On a lent GPU machine, as one command of the device tool (after `bash tools/device/wheels.sh` here):
#   run(command="bash tools/device/gpu_checks.sh", carry=[".whl"], timeout_s=540)
# What it proves, in about 5 minutes on an H200 (issue 16, section 5, and the CUDA/NCCL paths):
#   1. the suite's CUDA tests: the GMM fit on CUDA against the CPU fit from the same start
#      (float64 on each path, float32 compute), the VAE on CUDA, NCCL all-reduce across the GPUs;
#   2. benchmarks/scaling.py --device cuda: seconds per sweep at N=1e6, D=32, K=16 (float64 and
#      float32), TFLOP/s against the device's matmul, the speed-up over this machine's CPU, and the
#      ELBO against the CPU's from the same start.
# Logs and result files land in $OUT (the device tool brings them back).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/pyro-vi-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
{ nvidia-smi; python3 -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name(0))'; } \
    > "$OUT/device.txt" 2>&1
python3 -m pip install -q --no-index --no-deps --no-cache-dir .whl/*.whl || { echo "wheels: install failed" >&2; exit 2; }
# pyro_vi with models/ mapped to pyro_vi.models, as dev.sh installs it (no index, no build isolation)
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir -e . \
    || { echo "pyro-vi: editable install failed" >&2; exit 2; }
status=0
python3 -m pytest -q -p no:cacheprovider -rs \
    "tests/models/gmm/test_fast_paths.py::test_a_fit_on_the_device_matches_the_cpu_fit_from_the_same_start" \
    tests/models/vae/test_model.py tests/distributed/test_launch.py 2>&1 | tee "$OUT/tests.log" || status=1
python3 -m benchmarks.scaling --device cuda --out "$OUT" 2>&1 | tee "$OUT/scaling_cuda.log" || status=1
exit $status
