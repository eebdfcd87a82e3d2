"""The step-cache and memory benchmarks still run end to end at a tiny size and print their ratios."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(script: str, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow
def test_step_cache_benchmark_prints_every_option():
    out = run("step_cache.py", "--models", "embedded", "--steps", "4", "--frames", "4", "--repeats", "1",
              "--options", "none", "first-block", "mag", "taylorseer:1")  # fmt: skip
    for option in ("none", "first-block", "mag", "taylorseer:1"):
        assert re.search(
            rf"^{option}\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+(inf|[\d.]+)", out, re.M
        ), out
    # TaylorSeer refreshing every step is the uncached computation
    assert re.search(r"^taylorseer:1\s.*\s(inf|[6-9]\d\.\d|1\d\d\.\d)\s", out, re.M), out


@pytest.mark.slow
def test_memory_benchmark_prints_the_fp8_ratio_and_the_14b_estimate():
    out = run("memory.py", "--steps", "2", "--vae-size", "64")
    found = re.search(r"fp8 parameter memory ratio vs float32: ([\d.]+)x", out)
    assert found and float(found.group(1)) > 2, out
    assert "Wan2.1 I2V 14B" in out
