"""Data set format, the up-front validator and the latent cache."""

from __future__ import annotations

import json
import shutil

import numpy as np
import PIL.Image
import pytest
import torch
from frameprompt.training import data
from frameprompt.training.data import DatasetError, load_dataset, synthetic_dataset, validate_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _pose_json(n_points: int = 18, width: int = 32, height: int = 32) -> dict:
    keypoints = []
    for i in range(n_points):
        keypoints += [4.0 + i, 6.0 + i, 1.0]
    return {
        "version": 1.3,
        "canvas_width": width,
        "canvas_height": height,
        "people": [{"pose_keypoints_2d": keypoints}],
    }


def _damaged_dataset(root):
    synthetic_dataset(root, clips=9, num_frames=4, size=32)
    c = {i: root / f"clip_{i:04d}" for i in range(9)}
    (c[1] / "meta.json").unlink()
    (c[2] / "target" / "0002.png").unlink()
    PIL.Image.new("RGB", (48, 32)).save(c[3] / "target" / "0001.png")
    PIL.Image.new("RGB", (16, 16)).save(c[4] / "reference.png")
    shutil.rmtree(c[5] / "skeleton")
    (c[5] / "pose").mkdir()
    for i in range(4):
        (c[5] / "pose" / f"{i:04d}_keypoints.json").write_text(json.dumps(_pose_json(17 if i == 2 else 18)))
    meta = json.loads((c[6] / "meta.json").read_text())
    meta["num_frames"] = 6
    (c[6] / "meta.json").write_text(json.dumps(meta))
    shutil.rmtree(c[7] / "skeleton")
    (c[8] / "reference.png").write_bytes(b"not a png")
    return root


def test_validator_lists_every_bad_clip_with_its_reason(tmp_path):
    root = _damaged_dataset(tmp_path / "data")
    report = validate_dataset(root)
    reasons = dict(report.problems)
    assert [c.name for c in report.clips] == ["clip_0000"]
    assert sorted(reasons) == [f"clip_{i:04d}" for i in range(1, 9)]
    assert "meta.json is missing" in reasons["clip_0001"]
    assert "target/ has 3 frames, expected 4 (missing 0002)" in reasons["clip_0002"]
    assert "0001.png is 48x32" in reasons["clip_0003"]
    assert "reference.png is 16x16" in reasons["clip_0004"]
    assert "17 keypoints" in reasons["clip_0005"]
    assert (
        "not a positive multiple" in reasons["clip_0006"]
        and "has 4 frames, expected 6" in reasons["clip_0006"]
    )
    assert "no poses" in reasons["clip_0007"]
    assert "not a readable image" in reasons["clip_0008"]
    with pytest.raises(DatasetError) as error:
        load_dataset(root)
    assert len(error.value.problems) == 8
    assert all(f"clip_{i:04d}" in str(error.value) for i in range(1, 9))


def test_empty_dataset_and_mixed_shapes(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="holds no clips"):
        load_dataset(tmp_path / "empty")
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(tmp_path / "missing")
    root = synthetic_dataset(tmp_path / "mixed", clips=3, num_frames=4, size=32)
    synthetic_dataset(tmp_path / "big", clips=1, num_frames=4, size=64)
    shutil.move(tmp_path / "big" / "clip_0000", root / "zz_big")
    report = validate_dataset(root)
    assert len(report.clips) == 3
    assert report.problems == [("zz_big", "4 frames at 64x64 differs from the data set's 4 frames at 32x32")]


def test_pose_json_clips_validate_and_draw(tmp_path):
    pytest.importorskip("frameprompt_blender.core.openpose_json")
    root = synthetic_dataset(tmp_path / "d", clips=1, num_frames=4, size=32)
    clip = root / "clip_0000"
    shutil.rmtree(clip / "skeleton")
    (clip / "pose").mkdir()
    for i in range(4):
        (clip / "pose" / f"{i:04d}_keypoints.json").write_text(json.dumps(_pose_json()))
    (info,) = load_dataset(root)
    assert info.pose_source == clip / "pose" and not info.skeleton_files
    (clip / "pose" / "0003_keypoints.json").write_text(json.dumps(_pose_json(width=64, height=64)))
    assert "canvas" in dict(validate_dataset(root).problems)["clip_0000"]
    (clip / "pose" / "0003_keypoints.json").write_text(json.dumps(_pose_json()))
    pytest.importorskip("frameprompt_blender.core.openpose_draw")
    reference, skeleton, target = data.load_clip_pixels(info)
    assert skeleton.shape == (1, 3, 4, 32, 32) and skeleton.abs().sum() > 0


def test_latent_cache_encodes_once_and_follows_the_method(tiny_model_dir, tmp_path):
    from frameprompt.loading import load_pipeline
    from frameprompt.method import SequenceLayout

    pipe = load_pipeline(tiny_model_dir, device="cpu")
    root = synthetic_dataset(tmp_path / "d", clips=2, num_frames=4, size=32)
    clips = load_dataset(root)
    cache = data.build_latent_cache(pipe, clips, tmp_path / "cache")
    layout = SequenceLayout.for_models(4, 32, 32, pipe.vae, pipe.transformer)
    item = data.CachedClips(cache)[0]
    assert item["x0"].shape == (16, layout.latent_frames, 4, 4)
    assert item["text"].shape == (512, pipe.transformer.config.text_dim)
    lc = layout.context_latent_frames
    # the causal VAE: the condition's given frames are the clean context latents
    torch.testing.assert_close(item["condition"][:, :lc], item["x0"][:, :lc], rtol=0, atol=1e-6)
    assert not torch.allclose(item["condition"][:, lc:], item["x0"][:, lc:])

    files = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "cache").glob("clip_*.safetensors")}
    data.build_latent_cache(pipe, clips, tmp_path / "cache")
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "cache").glob("clip_*.safetensors")} == files
    PIL.Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(root / "clip_0001" / "target" / "0000.png")
    data.build_latent_cache(pipe, load_dataset(root), tmp_path / "cache")
    after = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "cache").glob("clip_*.safetensors")}
    assert after["clip_0000.safetensors"] == files["clip_0000.safetensors"]
    assert after["clip_0001.safetensors"] != files["clip_0001.safetensors"]

    zero = data.build_latent_cache(pipe, clips, tmp_path / "cache_zero", latent_zero_condition=True)
    assert torch.count_nonzero(data.CachedClips(zero)[0]["condition"][:, lc:]) == 0


def test_the_same_weights_from_another_folder_keep_their_fingerprint(tmp_path):
    """Caches and checkpoints name their base by its weights: a copied model reuses them."""
    import shutil

    from diffusers import WanTransformer3DModel
    from frameprompt.testing import TINY_TRANSFORMER
    from frameprompt.training.data import module_fingerprint

    torch.manual_seed(0)
    WanTransformer3DModel(**TINY_TRANSFORMER).save_pretrained(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "elsewhere" / "b")
    a = WanTransformer3DModel.from_pretrained(tmp_path / "a")
    b = WanTransformer3DModel.from_pretrained(tmp_path / "elsewhere" / "b")
    assert dict(a.config)["_name_or_path"] != dict(b.config)["_name_or_path"]
    assert module_fingerprint(a) == module_fingerprint(b)
    with torch.no_grad():
        b.proj_out.weight.add_(1.0)
    assert module_fingerprint(a) != module_fingerprint(b)
