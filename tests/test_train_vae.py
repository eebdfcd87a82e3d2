"""The light frame-wise AutoencoderKLWan trainer (frameprompt.research.train_vae): tiny and fast."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import AutoencoderKLWan
from frameprompt.method import SequenceLayout
from frameprompt.research import train_vae as tv

TINY = dict(base_dim=4, dim_mult=[1, 1, 1], z_dim=16, num_res_blocks=1)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _vae() -> AutoencoderKLWan:
    torch.manual_seed(0)
    config = tv.VAETrainConfig(data=[], out="", **TINY).vae_config()
    assert config["scale_factor_spatial"] == 4 and config["temperal_downsample"] == [False, False]
    return AutoencoderKLWan(**config).eval()


def test_framewise_matches_diffusers_forward_and_frames_are_independent():
    vae = _vae()
    tv.zero_past_taps(vae)
    assert tv.is_framewise(vae)
    video = torch.rand(1, 3, 9, 16, 16) * 2 - 1
    with torch.no_grad():
        z = vae.encode(video).latent_dist.mode()
        y = vae.decode(z).sample
        with tv.framewise(vae):
            z2 = vae.encode(video).latent_dist.mode()
            y2 = vae.decode(z2).sample
        z_single = vae.encode(video[:, :, 5:6]).latent_dist.mode()  # one frame alone
    assert z.shape == (1, 16, 9, 4, 4)
    assert torch.allclose(z, z2, atol=1e-5) and torch.allclose(y, y2, atol=1e-5)
    assert torch.allclose(z[:, :, 5:6], z_single, atol=1e-5)
    layout = SequenceLayout.for_models(
        4, 32, 32, vae, type("T", (), {"config": type("C", (), {"patch_size": (1, 2, 2)})})()
    )
    assert (layout.latent_frames, layout.context_latent_frames) == (9, 5)


def test_framewise_refuses_a_temporal_vae():
    vae = _vae()
    with pytest.raises(ValueError), tv.framewise(vae):
        pass


def test_train_checkpoint_resume_and_export(tmp_path):
    frames = torch.randint(0, 255, (12, 3, 16, 16), dtype=torch.uint8)
    config = tv.VAETrainConfig(
        data=[], out=str(tmp_path / "run"), batch_size=2, crop=8, max_steps=3, checkpoint_every=2, **TINY
    )
    folder = tv.train_vae(config, frames=frames)
    run = tmp_path / "run"
    assert (run / "latest").read_text() == "step_0000003"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_0000002", "step_0000003"]
    vae = AutoencoderKLWan.from_pretrained(folder)
    assert len(vae.config.latents_mean) == 16 and tv.is_framewise(vae)
    rows = (run / "train_log.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 3
    # resume to step 5: continues the log and the step count
    config.max_steps, config.resume = 5, True
    tv.train_vae(config, frames=frames)
    assert (run / "latest").read_text() == "step_0000005"
    rows = (run / "train_log.csv").read_text().strip().splitlines()
    assert [int(r.split(",")[0]) for r in rows[1:]] == [1, 2, 3, 4, 5]
    assert json.loads((run / "checkpoints" / "step_0000005" / "state.json").read_text())["step"] == 5
    assert tv.reconstruction_psnr(vae, frames) > 0
