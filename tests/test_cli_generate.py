"""`frameprompt generate` end to end on a tiny local checkpoint folder."""

import os
import subprocess
import sys
from pathlib import Path

import imageio.v2 as imageio
import pytest
from frameprompt.cli import main
from frameprompt.media import write_frames
from frameprompt.testing import demo_inputs


@pytest.fixture()
def inputs(tmp_path):
    reference, poses = demo_inputs(4, 32)
    reference.save(tmp_path / "ref.png")
    write_frames(poses, tmp_path / "skeleton")
    return tmp_path


def test_generate_writes_exactly_n_frames_and_a_video(tiny_model_dir, inputs):
    out = inputs / "out"
    rc = main(
        [
            "generate",
            "--model",
            str(tiny_model_dir),
            "--reference",
            str(inputs / "ref.png"),
            "--pose",
            str(inputs / "skeleton"),
            "--out",
            str(out),
            "--steps",
            "2",
        ]
    )
    assert rc == 0
    assert sorted(p.name for p in (out / "frames").iterdir()) == [
        "0000.png",
        "0001.png",
        "0002.png",
        "0003.png",
    ]
    assert imageio.get_reader(out / "video.mp4").count_frames() == 4


def test_generate_from_openpose_json_folder(tiny_model_dir, tmp_path):
    pytest.importorskip("frameprompt_blender.core.openpose_json")
    import numpy as np

    from frameprompt_blender.core.keypoints import Pose
    from frameprompt_blender.core.openpose_json import write_pose_json

    reference, _ = demo_inputs(4, 32)
    reference.save(tmp_path / "ref.png")
    (tmp_path / "pose").mkdir()
    for i in range(4):
        points = np.zeros((18, 3), np.float32)
        points[:, 0], points[:, 1], points[:, 2] = 10 + i, np.linspace(4, 28, 18), 1.0
        write_pose_json(tmp_path / "pose" / f"{i:04d}_keypoints.json", Pose(points, 32, 32))
    rc = main(
        [
            "generate",
            "--model",
            str(tiny_model_dir),
            "--reference",
            str(tmp_path / "ref.png"),
            "--pose",
            str(tmp_path / "pose"),
            "--out",
            str(tmp_path / "out"),
            "--steps",
            "1",
        ]
    )
    assert rc == 0 and len(list((tmp_path / "out" / "frames").iterdir())) == 4


def test_bad_inputs_get_an_error_with_a_fix(tiny_model_dir, inputs, capsys):
    base = [
        "generate",
        "--reference",
        str(inputs / "ref.png"),
        "--pose",
        str(inputs / "skeleton"),
        "--out",
        str(inputs / "o"),
    ]
    assert main([*base, "--model", str(inputs / "missing")]) == 2
    assert "Wan2.1-I2V-14B-480P-Diffusers" in capsys.readouterr().err
    assert main([*base, "--model", str(tiny_model_dir), "--width", "40"]) == 2
    assert "not a multiple of 16" in (err := capsys.readouterr().err) and "--width 32" in err
    for frame in (inputs / "skeleton").iterdir():
        frame.unlink()
    assert main([*base, "--model", str(tiny_model_dir)]) == 2
    assert "no skeleton frames" in capsys.readouterr().err


def test_any_frame_count_is_generated_window_by_window(tiny_model_dir, tmp_path):
    reference, poses = demo_inputs(10, 32)
    reference.save(tmp_path / "ref.png")
    write_frames(poses, tmp_path / "skeleton")
    out = tmp_path / "out"
    rc = main(
        [
            "generate",
            "--model",
            str(tiny_model_dir),
            "--reference",
            str(tmp_path / "ref.png"),
            "--pose",
            str(tmp_path / "skeleton"),
            "--out",
            str(out),
            "--steps",
            "1",
            "--window-frames",
            "8",
            "--overlap",
            "4",
        ]
    )
    assert rc == 0
    assert len(list((out / "frames").glob("*.png"))) == 10
    assert imageio.get_reader(out / "video.mp4").count_frames() == 10


def test_console_script_is_installed():
    exe = Path(sys.executable).with_name("frameprompt")
    result = subprocess.run(
        [str(exe), "--help"], capture_output=True, text=True, env={**os.environ}, timeout=120
    )
    assert result.returncode == 0 and "generate" in result.stdout
