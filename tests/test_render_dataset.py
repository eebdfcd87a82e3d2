"""`frameprompt dataset render` with the real bpy module (tiny: 32x32, N=4), in a subprocess so bpy and
torch never share a process."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

# find_spec, not importorskip: bpy is only imported by the subprocesses
pytestmark = [
    pytest.mark.blender,
    pytest.mark.skipif(
        importlib.util.find_spec("bpy") is None, reason="needs bpy (pip install 'bpy==4.5.*')"
    ),
    pytest.mark.usefixtures("one_torch_thread"),
]
REPO = Path(__file__).resolve().parents[1]


def _render(out: Path, clips: int, *extra: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO / "backend"), str(REPO)]),
    }
    command = [sys.executable, "-m", "frameprompt.cli", "dataset", "render", "--out", str(out)]
    command += ["--clips", str(clips), "--frames", "4", "--size", "32x32", "--no-progress", *extra]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def test_render_validate_and_resume(tmp_path):
    from frameprompt.training.data import clip_skeleton_images, load_dataset, validate_dataset

    out = tmp_path / "data"
    result = _render(out, 2, "--motions", "walk,jump")
    assert result.returncode == 0, result.stderr[-2000:]
    clips = load_dataset(out)
    assert [c.name for c in clips] == ["clip_00000", "clip_00001"]
    metas = [json.loads((c.path / "meta.json").read_text()) for c in clips]
    assert [m["source"] for m in metas] == ["builtin:walk", "builtin:jump"]
    assert all(m["num_frames"] == 4 and len(m["frames"]) == 4 for m in metas)

    clip = clips[0]
    target = np.stack([np.asarray(PIL.Image.open(f)) for f in clip.target_files])
    assert target.shape == (4, 32, 32, 3) and target.std() > 5  # a rendered picture, not a flat colour
    # the stored skeletons are exactly what the shared drawer makes of the stored OpenPose JSON
    pytest.importorskip("frameprompt_blender.core.openpose_draw")
    drawn = clip_skeleton_images(clip.__class__(**{**clip.__dict__, "skeleton_files": ()}))
    stored = clip_skeleton_images(clip)
    for a, b in zip(drawn, stored, strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert any(np.asarray(s).any() for s in stored)

    # resumable: finished clips are kept as they are, an interrupted one is redone, new ones added
    before = {p: p.stat().st_mtime_ns for p in (out / "clip_00000").rglob("*")}
    (out / ".tmp-clip_00002").mkdir()
    (out / ".tmp-clip_00002" / "junk").write_text("half a clip")
    result = _render(out, 3, "--motions", "walk,jump")
    assert result.returncode == 0, result.stderr[-2000:]
    assert {p: p.stat().st_mtime_ns for p in (out / "clip_00000").rglob("*")} == before
    report = validate_dataset(out)
    assert report.ok and len(report.clips) == 3 and not (out / ".tmp-clip_00002").exists()


def test_render_from_a_blend_file_with_an_action(tmp_path):
    blend = tmp_path / "hero.blend"
    script = (
        "import bpy; from frameprompt_blender.blender.demo_scene import build_demo_scene; "
        "bpy.ops.wm.read_homefile(use_empty=True); build_demo_scene(); "
        f"bpy.ops.wm.save_as_mainfile(filepath={str(blend)!r})"
    )
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO / "backend"), str(REPO)]),
    }
    subprocess.run([sys.executable, "-c", script], env=env, check=True, capture_output=True, timeout=120)
    result = _render(tmp_path / "data", 1, "--blend", str(blend), "--seed", "3")
    assert result.returncode == 0, result.stderr[-2000:]
    from frameprompt.training.data import load_dataset

    (clip,) = load_dataset(tmp_path / "data")
    meta = json.loads((clip.path / "meta.json").read_text())
    assert meta["source"] == "hero.blend:FP_WalkWave" and 1 <= meta["frames"][0] <= 21
    assert _render(tmp_path / "data2", 1, "--blend", str(tmp_path / "missing.blend")).returncode == 2


def test_rendered_clips_train_generate_and_evaluate(tmp_path, tiny_model_dir):
    """The whole path on CPU: Blender clips -> LoRA steps -> pipeline with the LoRA -> metrics."""
    import shutil

    from frameprompt.evaluation import metrics
    from frameprompt.loading import load_pipeline
    from frameprompt.training.trainer import TrainConfig, Trainer

    data = tmp_path / "data"
    assert _render(data, 3, "--motions", "walk,wave,dance").returncode == 0
    shutil.rmtree(data / "clip_00002" / "skeleton")  # this clip's skeletons are drawn from its OpenPose JSON
    config = TrainConfig(
        data=str(data), out=str(tmp_path / "run"), model=str(tiny_model_dir), lora_rank=4, lora_alpha=4,
        max_steps=3, progress=False,
    )  # fmt: skip
    result = Trainer(config).run()
    assert result.steps == 3 and np.isfinite(result.losses).all()

    pipe = load_pipeline(tiny_model_dir, device="cpu", lora=result.output)
    from frameprompt.training.data import clip_skeleton_images, load_dataset

    clip = load_dataset(data)[2]
    reference = PIL.Image.open(clip.path / "reference.png")
    frames = pipe(reference, clip_skeleton_images(clip), num_inference_steps=2, output_type="pil").frames[0]
    pred = tmp_path / "pred" / clip.name
    pred.mkdir(parents=True)
    for i, frame in enumerate(frames):
        frame.save(pred / f"{i:04d}.png")
    report = metrics.evaluate_folders(tmp_path / "pred", data)
    assert [r["clip"] for r in report["clips"]] == [clip.name]
    assert 0 < report["means"]["psnr"] < 100 and -1 <= report["means"]["ssim"] < 1


def test_render_through_a_blender_binary(tmp_path):
    """--blender runs `blender -b --python-expr ... -- ARGS`; a stand-in binary runs the same expression
    with this venv's Python (which has bpy), so the hand-over of arguments is what is tested."""
    fake = tmp_path / "blender"
    fake.write_text(
        f"#!{sys.executable}\n"
        "import sys\n"
        "argv = sys.argv[1:]\n"
        "assert argv[:4] == ['-b', '--factory-startup', '--python-exit-code', '1'], argv\n"
        "expr = argv[argv.index('--python-expr') + 1]\n"
        "sys.argv = ['blender'] + argv\n"
        "exec(compile(expr, '<expr>', 'exec'))\n"
    )
    fake.chmod(0o755)
    result = _render(tmp_path / "data", 1, "--motions", "wave", "--blender", str(fake))
    assert result.returncode == 0, result.stderr[-2000:]
    meta = json.loads((tmp_path / "data" / "clip_00000" / "meta.json").read_text())
    assert meta["source"] == "builtin:wave" and meta["width"] == 32
    missing = _render(tmp_path / "data2", 1, "--blender", str(tmp_path / "no-blender"))
    assert missing.returncode == 2 and "cannot run Blender" in missing.stderr


def test_procedural_characters_render_and_respect_the_held_out_split(tmp_path):
    train = _render(tmp_path / "train", 2, "--characters", "train", "--num-characters", "3")
    test = _render(tmp_path / "test", 1, "--characters", "test", "--num-characters", "2")
    assert train.returncode == 0 and test.returncode == 0, train.stderr[-2000:] + test.stderr[-2000:]
    train_ids = {json.loads(m.read_text())["character"] for m in (tmp_path / "train").glob("*/meta.json")}
    test_ids = {json.loads(m.read_text())["character"] for m in (tmp_path / "test").glob("*/meta.json")}
    assert train_ids and test_ids
    assert all(i % 10 for i in train_ids) and all(i % 10 == 0 for i in test_ids)
    for clip in (tmp_path / "train").iterdir():
        assert (clip / "reference.png").is_file() and len(list((clip / "target").glob("*.png"))) == 4


def test_built_in_clips_look_like_what_a_user_sends(tmp_path):
    """A separate reference render of the clip's first frame, large motion after it, a character that
    fills at least 40 % of the frame height, and a background that stays put."""
    motions = "walk,run,wave,jump,turn,dance,crouch"
    out = tmp_path / "data"
    result = _render(out, 7, "--motions", motions, "--characters", "train", "--num-characters", "7")
    assert result.returncode == 0, result.stderr[-2000:]
    from frameprompt.training.data import clip_skeleton_images, load_dataset

    for clip in load_dataset(out):
        meta = json.loads((clip.path / "meta.json").read_text())
        assert meta["reference_frame"] < meta["frames"][0], meta
        reference = np.asarray(PIL.Image.open(clip.path / "reference.png").convert("RGB")).astype(int)
        targets = np.stack([np.asarray(PIL.Image.open(f).convert("RGB")) for f in clip.target_files])
        moving = (np.abs(targets.astype(int) - reference).max(-1) > 25).any(0)
        assert moving.mean() >= 0.1, f"{meta['source']}: only {moving.mean():.1%} of the pixels move"
        # the skeleton (neck to ankles) alone spans 40 % of the height in some frame
        rows = [np.flatnonzero(np.asarray(s).max(-1).max(-1)) for s in clip_skeleton_images(clip)]
        assert max(r[-1] - r[0] + 1 for r in rows if len(r)) >= 0.4 * clip.height, meta["source"]
        # the corners (background) are the same in every frame: a static camera
        corners = targets[:, [0, 0, -1, -1], [0, -1, 0, -1]]
        assert np.abs(corners.astype(int) - corners[0]).max() <= 2, meta["source"]
