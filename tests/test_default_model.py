"""The embedded default model (backend/frameprompt/default_model/, made by scripts/train_default_model.sh)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from frameprompt.loading import DEFAULT_MODEL_DIR

pytestmark = pytest.mark.skipif(
    not (DEFAULT_MODEL_DIR / "model_index.json").is_file(),
    reason=f"the default model is not in this checkout ({DEFAULT_MODEL_DIR}); "
    "scripts/train_default_model.sh with EXPORT=1 makes it",
)


def test_size_and_format():
    files = [p for p in DEFAULT_MODEL_DIR.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 50 * 1024 * 1024
    weights = [p for p in files if p.suffix in (".safetensors", ".bin", ".pt", ".pth", ".ckpt")]
    assert weights and all(p.suffix == ".safetensors" for p in weights)


def test_loads_and_generates_n_frames():
    from frameprompt.loading import load_pipeline
    from frameprompt.method import SequenceLayout
    from frameprompt.research.train_vae import is_framewise
    from frameprompt.testing import demo_inputs

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pipe = load_pipeline(None, device="cpu")
        pipe.set_progress_bar_config(disable=True)
        info = json.loads((DEFAULT_MODEL_DIR / "frameprompt_training.json").read_text())
        n, size = info["num_frames"], info["width"]
        assert SequenceLayout.for_models(n, size, size, pipe.vae, pipe.transformer).num_frames == n
        assert is_framewise(pipe.vae)  # the codec encodes each frame on its own
        reference, poses = demo_inputs(num_frames=n, size=size)
        out = pipe(
            reference,
            poses,
            num_inference_steps=2,
            output_type="np",
            generator=torch.Generator().manual_seed(0),
        )
    finally:
        torch.set_num_threads(previous)
    frames = out.frames
    assert frames.shape == (1, n, size, size, 3)
    assert np.isfinite(frames).all() and frames.std() > 0


def test_frame_independent_cache_equals_encoding_the_condition(tmp_path, one_torch_thread):
    """The shortcut the recipe's latent cache takes with the frame-wise codec changes no latent."""
    from frameprompt.loading import load_pipeline
    from frameprompt.research.train_vae import framewise
    from frameprompt.training.data import CachedClips, build_latent_cache, load_dataset, synthetic_dataset

    pipe = load_pipeline(None, device="cpu")
    clips = load_dataset(synthetic_dataset(tmp_path / "d", clips=1, num_frames=4, size=32))
    with framewise(pipe.vae):
        encoded = CachedClips(build_latent_cache(pipe, clips, tmp_path / "full"))[0]
        shortcut = CachedClips(build_latent_cache(pipe, clips, tmp_path / "fast", frame_independent=True))[0]
    torch.testing.assert_close(shortcut["x0"], encoded["x0"], rtol=0, atol=0)
    torch.testing.assert_close(shortcut["condition"], encoded["condition"], rtol=0, atol=1e-4)
    assert encoded["condition"].abs().amax() > 0.1
