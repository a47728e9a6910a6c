#!/usr/bin/env bash
# Every GPU check and figure in one run (at most ~9 minutes), for a machine that has the
# project's tree, a CUDA PyTorch and transformers (not necessarily the project's venv).
#
#   bash benchmarks/gpu_session.sh [OUTPUT_DIR]
#
# 1. the CUDA tests: graph replay == eager and a stale prefix refused, images prepared on the GPU;
# 2. bench_gpu.py: eager and CUDA-graph chunks for every family (model ms, end-to-end ms, memory, differences);
# 3. bench_gpu.py: smolvla-base compiled and compiled + graphs in bfloat16 (compiling takes minutes).
# (benchmarks/gpu_check.py, CUDA vs CPU correctness and eager phase figures, is a separate command.)
# Packages the machine lacks (diffusers for the diffusion family) are installed from ./.whl when that
# folder holds their wheels. Each part has its own time limit, so a failure or a slow part leaves the rest.
set -u
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out="${1:-gpu_session_out}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/hlrp_site .whl/*.whl \
        && export PYTHONPATH="/tmp/hlrp_site:${PYTHONPATH:-}"
fi
export PYTHONPATH=".:${PYTHONPATH:-}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
timeout 90 python3 -m pytest -q -p no:cacheprovider test/test_fixed_shapes.py test/test_model_inference.py \
    -k "cuda or gpu or eager_actions or pi_family" 2>&1 | tail -15 | tee "$out/pytest.txt"
timeout 230 python3 benchmarks/bench_gpu.py --modes eager graphs --deadline 190 2>&1 | tee "$out/bench_gpu.txt"
timeout 200 python3 benchmarks/bench_gpu.py --presets smolvla-base --modes compiled compiled+graphs \
    --dtypes bfloat16 --deadline 150 2>&1 | tee "$out/bench_gpu_compiled.txt"
