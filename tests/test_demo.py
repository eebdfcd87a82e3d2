"""The README's first command, end to end: demo scene in Blender -> server process -> strip + .blend + MP4."""

import json
import subprocess
import sys
from pathlib import Path

import imageio.v2 as imageio
import pytest

pytestmark = pytest.mark.blender


def test_demo_runs_the_whole_path_headless(tmp_path):
    out = tmp_path / "demo"
    exe = Path(sys.executable).with_name("frameprompt")
    result = subprocess.run(
        [
            str(exe),
            "demo",
            "--out",
            str(out),
            "--untrained",
            "--frames",
            "4",
            "--width",
            "64",
            "--height",
            "64",
            "--steps",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:] + (out / "server.log").read_text()[-3000:]
    frames = sorted((out / "frames").glob("*.png"))
    assert [f.name for f in frames] == ["0000.png", "0001.png", "0002.png", "0003.png"]
    assert len(list((out / "pose").glob("*_keypoints.json"))) == 4 and (out / "reference.png").is_file()
    videos = list(out.glob("*.mp4"))
    assert len(videos) == 1 and imageio.get_reader(videos[0]).count_frames() == 4
    import PIL.Image

    grid = PIL.Image.open(out / "grid.png")  # reference + 4 skeletons over 4 frames, 4x up
    assert grid.size == (5 * 64 * 4, 2 * 64 * 4)

    # The saved .blend holds an image strip with the 4 result frames.
    probe = (
        "import bpy, json, sys; bpy.ops.wm.open_mainfile(filepath=sys.argv[-1]); se = bpy.context.scene.sequence_editor;"
        "strips = se.strips if hasattr(se, 'strips') else se.sequences;"
        "print(json.dumps([[s.type, s.directory, [e.filename for e in s.elements]] for s in strips if s.type == 'IMAGE']))"
    )
    blend = out / "demo.blend"
    listing = subprocess.run(
        [sys.executable, "-c", probe, str(blend)], capture_output=True, text=True, timeout=120
    )
    strips = json.loads(listing.stdout.strip().splitlines()[-1])
    assert len(strips) == 1
    kind, directory, files = strips[0]
    assert files == ["0000.png", "0001.png", "0002.png", "0003.png"]
    assert Path(directory.replace("//", str(blend.parent) + "/", 1)).resolve() == (out / "frames").resolve()
