"""`scripts/gpu_check.sh --dry-run`: every part of the GPU check, on the CPU at tiny shapes."""

from __future__ import annotations

import importlib.util
import math
import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ROWS = ["stock I2V step", "FramePrompt step", "+ context cache", "+ step cache", "+ fp8 storage", "+ compile"]


def run_check(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--dry-run", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=900, env=env,
    )  # fmt: skip


def row(stdout: str, name: str) -> tuple[float, str]:
    found = re.search(rf"^{re.escape(name)}\s+(\S+)\s+\S+\s+(.*)$", stdout, re.M)
    assert found, stdout[-3000:]
    return float(found.group(1)), found.group(2)


@pytest.mark.slow
def test_dry_run_prints_every_row():
    proc = run_check()
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ROWS:
        seconds, _ = row(proc.stdout, name)
        assert math.isfinite(seconds) and seconds > 0
    seconds, note = row(proc.stdout, "ZeRO-2 fine-tune")
    if importlib.util.find_spec("deepspeed") is None:
        assert "NOT RUN: deepspeed is not installed" in note
    else:  # DeepSpeed ZeRO-2 in one process on its CPU accelerator
        assert "FAILED" not in note, note
        assert math.isfinite(seconds) and "2 steps logged" in note


def test_without_cuda_the_full_check_says_to_use_dry_run():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the full check would run")
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and "--dry-run" in proc.stderr
