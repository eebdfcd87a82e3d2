"""Every benchmark still runs end to end at a tiny size and prints its ratio.

Speed is not asserted here (timings belong to the benchmarks themselves, run at full size); what is
checked is that each script works against the current code and that its own correctness checks pass.
"""

from __future__ import annotations

import importlib.util
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# (script, tiny arguments, the ratio line it must print)
CASES = [
    (
        "context_cache.py",
        [
            "--frames",
            "4",
            "--height",
            "32",
            "--width",
            "32",
            "--steps",
            "2",
            "--layers",
            "1",
            "--repeats",
            "1",
        ],
        r"speed-up \(wall\) cached vs uncached block-causal: ([\d.]+)x",
    ),
    (
        "step_overhead.py",
        ["--frames", "4", "--size", "32", "--steps", "2", "--repeats", "1", "--width-scale", "1"],
        r"ratio FramePrompt / stock: ([\d.]+)",
    ),
    (
        "train_step.py",
        ["--size", "32", "--frames", "4", "--steps", "2", "--threads", "1"],
        r"ratio cache / encode: ([\d.]+)x",
    ),
    (
        "transport.py",
        ["--frames", "4", "--width", "64", "--height", "64", "--repeats", "2"],
        r"ratio \(median server overhead / median bare\): ([\d.]+)",
    ),
    (
        "keypoint_export.py",
        ["--frames", "3", "--repeats", "1"],
        r"export / evaluation = ([\d.]+)",
    ),
]


@pytest.mark.parametrize(("script", "args", "ratio_line"), CASES, ids=[c[0] for c in CASES])
def test_benchmark_runs_and_prints_its_ratio(script: str, args: list[str], ratio_line: str) -> None:
    if script == "keypoint_export.py" and importlib.util.find_spec("bpy") is None:
        pytest.skip("keypoint_export needs bpy")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = re.search(ratio_line, proc.stdout)
    assert found, proc.stdout[-2000:]
    ratio = float(found.group(1))
    assert math.isfinite(ratio) and ratio > 0
    if script == "context_cache.py":  # cached and uncached denoising must agree
        assert "(OK, limit 1e-3)" in proc.stdout, proc.stdout[-2000:]


def test_step_overhead_refuses_a_single_step() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "step_overhead.py"), "--steps", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "--steps must be at least 2" in proc.stderr
