#!/usr/bin/env bash
# The GPU check: bf16 inference of a Wan2.1-1.3B-shaped model at 480x832x81 (stock I2V step, FramePrompt
# step, context cache, step cache, fp8, compile) and 20 DeepSpeed ZeRO-2 fine-tune steps, one table.
# Needs one CUDA GPU (under 8 minutes) and `pip install deepspeed`; --dry-run runs every part on the CPU
# at tiny shapes. See benchmarks/gpu_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
exec "$PYTHON" benchmarks/gpu_check.py "$@"
