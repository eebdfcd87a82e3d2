"""Baselines (not on the product path): channel concatenation and token-wise pose residual, tiny."""

from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderKLWan
from frameprompt.research import baselines
from frameprompt.research.train_vae import VAETrainConfig, zero_past_taps
from frameprompt.testing import TINY_TRANSFORMER

CONFIG = {**TINY_TRANSFORMER, "text_dim": 8}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _batch(n=4, b=2, z=16, hw=4):
    torch.manual_seed(0)
    return {
        "x0": torch.randn(b, z, 1 + 2 * n, hw, hw),
        "condition": torch.randn(b, z, 1 + 2 * n, hw, hw),
        "text": torch.zeros(b, 1, 8),
    }


@pytest.mark.parametrize("kind", baselines.KINDS)
def test_loss_and_gradients(kind):
    torch.manual_seed(0)
    model = baselines.BaselineModel(kind, CONFIG)
    assert model.transformer.config.in_channels == (49 if kind == "concat" else 33)
    loss = baselines.baseline_loss(model, _batch(), 4, torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss)
    if kind == "residual":
        assert model.pose_encoder.net[-1].weight.grad.abs().sum() > 0  # the pose path learns


@pytest.mark.parametrize("kind", baselines.KINDS)
def test_a_baseline_started_from_an_i2v_model_is_that_model_at_step_0(kind, tmp_path):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(1)
    i2v = WanTransformer3DModel(**{**CONFIG, "in_channels": 33, "out_channels": 16}).eval()
    i2v.save_pretrained(tmp_path / "stage1" / "transformer")
    model = baselines.BaselineModel(kind, CONFIG).eval()
    baselines.load_pretrained_i2v(model, tmp_path / "stage1")
    x0, cond, pose = baselines.split_cached(_batch(), 4)
    t, text = torch.tensor([500.0, 500.0]), torch.zeros(2, 1, 8)
    mask = torch.zeros_like(x0[:, :1])
    mask[:, :, 0] = 1
    with torch.no_grad():
        expected = i2v(
            hidden_states=torch.cat([x0, mask, cond], 1), timestep=t, encoder_hidden_states=text,
            return_dict=False,
        )[0]  # fmt: skip
        got = model(x0, cond, pose, t, text)
    torch.testing.assert_close(got, expected)


def test_residual_starts_as_plain_i2v_and_the_pose_matters_after_a_change():
    torch.manual_seed(0)
    model = baselines.BaselineModel("residual", CONFIG)
    x0, cond, pose = baselines.split_cached(_batch(), 4)
    t = torch.tensor([500.0, 500.0])
    text = torch.zeros(2, 1, 8)
    a = model(x0, cond, pose, t, text)
    b = model(x0, cond, torch.randn_like(pose), t, text)
    assert torch.equal(a, b)  # zero-initialised last layer
    with torch.no_grad():
        model.pose_encoder.net[-1].bias.fill_(0.1)
    assert not torch.allclose(model(x0, cond, pose, t, text), a)


def test_generate_shapes():
    torch.manual_seed(0)
    vae = AutoencoderKLWan(
        **VAETrainConfig(data=[], out="", base_dim=4, dim_mult=[1, 1, 1]).vae_config()
    ).eval()
    zero_past_taps(vae)
    model = baselines.BaselineModel("concat", CONFIG)
    frames = baselines.generate(
        model, vae, torch.zeros(1, 3, 1, 16, 16), torch.zeros(1, 3, 4, 16, 16), steps=2
    )
    assert frames.shape == (1, 3, 4, 16, 16) and torch.isfinite(frames).all()


def test_results_table_reads_the_metrics_of_every_budget(tmp_path):
    import json

    def write(folder, ssim, fvd=None, character=None):
        folder.mkdir(parents=True)
        metrics = {"ssim": ssim, "psnr": 20.0, "lpips": None, "fvd": fvd, "settings": {}}
        (folder / "metrics.json").write_text(json.dumps(metrics))
        if character is not None:  # as `default_model region --json` writes it: per prediction folder
            region = {"moving_psnr": character - 3, "static_psnr": 35.0, "character_psnr": character}
            (folder / "region.json").write_text(json.dumps({folder.name: region}))

    metrics = tmp_path / "metrics"
    write(metrics / "repeat_reference", 0.9, fvd=10.0, character=30.0)
    write(metrics / "vae_reconstruction", 0.95)
    write(metrics / "step1000" / "concat", 0.5)
    write(metrics / "step500" / "frameprompt", 0.6, fvd=123.45, character=21.5)
    lines = baselines.results_table(tmp_path).splitlines()
    assert lines[2].startswith("| reference frame repeated") and "| 27.00 | 35.00 | 30.00 |" in lines[2]
    assert lines[3] == (
        "| **FramePrompt** (target-frames loss) | 500 | 0.6000 | 20.00 | 18.50 | 35.00 | 21.50 | n/a | 123.5 |"
    )
    assert lines[4].startswith("| channel concatenation") and "| 1,000 |" in lines[4]
    assert lines[5].startswith("| VAE reconstruction") and len(lines) == 6
