"""The fine-tuning loop on the tiny random models: LoRA, resume, checkpoints, errors, full fine-tune."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from frameprompt.errors import IncompatibleModelError
from frameprompt.testing import demo_inputs, tiny_pipeline_dir
from frameprompt.training.data import DatasetError, synthetic_dataset
from frameprompt.training.lora import LORA_FILE
from frameprompt.training.trainer import (
    LOG_FILE,
    LOSS_PLOT,
    TRAINING_INFO,
    DiskFullError,
    TrainConfig,
    Trainer,
    latest_checkpoint,
)
from safetensors.torch import load_file

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def two_clips(tmp_path_factory) -> Path:
    return synthetic_dataset(tmp_path_factory.mktemp("data") / "two", clips=2, num_frames=4, size=32)


def _config(data, model, out, **kw) -> TrainConfig:
    base = dict(data=str(data), model=str(model), out=str(out), lora_rank=4, lora_alpha=4, progress=False)
    base.update(kw)
    return TrainConfig(**base)


def test_lora_finetune_changes_only_lora_weights_and_loads_everywhere(tiny_model_dir, two_clips, tmp_path):
    from diffusers import WanTransformer3DModel

    trainer = Trainer(_config(two_clips, tiny_model_dir, tmp_path / "out", max_steps=3, checkpoint_every=10))
    result = trainer.run()
    assert result.steps == 3 and len(result.losses) == 3
    assert all(np.isfinite(result.losses))

    base = WanTransformer3DModel.from_pretrained(tiny_model_dir, subfolder="transformer").state_dict()
    trained = trainer.accelerator.unwrap_model(trainer.transformer)
    lora_changed = False
    for name, param in trained.named_parameters():
        if "lora_" in name:
            lora_changed |= bool(param.detach().abs().sum() > 0) and "lora_B" in name
            continue
        key = name.replace(".base_layer", "")
        torch.testing.assert_close(param.detach(), base[key], rtol=0, atol=0, msg=f"{name} changed")
    assert lora_changed, "no LoRA B matrix moved away from zero"

    lora_file = tmp_path / "out" / LORA_FILE
    assert result.output == lora_file and lora_file.is_file()
    info = json.loads((tmp_path / "out" / TRAINING_INFO).read_text())
    assert info["kind"] == "lora" and info["steps"] == 3 and info["context_cache"] is False
    assert (tmp_path / "out" / LOG_FILE).read_text().count("\n") == 4  # header + 3 steps
    assert (tmp_path / "out" / LOSS_PLOT).stat().st_size > 1000

    # frameprompt's loader (generate / serve) and diffusers' own Wan pipeline both take the file.
    from diffusers import WanImageToVideoPipeline
    from frameprompt.loading import load_pipeline

    reference, poses = demo_inputs(num_frames=4, size=32)
    kwargs = dict(num_inference_steps=2, output_type="np", generator=None)
    plain = load_pipeline(tiny_model_dir, device="cpu")
    with_lora = load_pipeline(tiny_model_dir, device="cpu", lora=lora_file)
    torch.manual_seed(0)
    out_plain = plain(reference, poses, **kwargs).frames
    torch.manual_seed(0)
    out_lora = with_lora(reference, poses, **kwargs).frames
    assert out_plain.shape == out_lora.shape == (1, 4, 32, 32, 3)
    assert not np.array_equal(out_plain, out_lora)

    wan = WanImageToVideoPipeline(
        tokenizer=None,
        text_encoder=None,
        vae=plain.vae,
        scheduler=plain.scheduler,
        transformer=WanTransformer3DModel.from_pretrained(tiny_model_dir, subfolder="transformer"),
    )
    wan.load_lora_weights(str(lora_file), adapter_name="trained")
    assert any("lora" in n for n, _ in wan.transformer.named_parameters())


def test_resume_continues_bit_exactly(tiny_model_dir, two_clips, tmp_path):
    straight = Trainer(
        _config(two_clips, tiny_model_dir, tmp_path / "a", max_steps=4, checkpoint_every=2)
    ).run()
    first = Trainer(_config(two_clips, tiny_model_dir, tmp_path / "b", max_steps=2, checkpoint_every=2)).run()
    resumed = Trainer(
        _config(two_clips, tiny_model_dir, tmp_path / "b", max_steps=4, checkpoint_every=2, resume=True)
    ).run()
    assert first.losses + resumed.losses == straight.losses
    a, b = load_file(tmp_path / "a" / LORA_FILE), load_file(tmp_path / "b" / LORA_FILE)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    log = (tmp_path / "b" / LOG_FILE).read_text().splitlines()
    assert [row.split(",")[0] for row in log[1:]] == ["1", "2", "3", "4"]


def test_resume_refuses_other_settings_and_missing_checkpoints(tiny_model_dir, two_clips, tmp_path):
    Trainer(_config(two_clips, tiny_model_dir, tmp_path / "o", max_steps=1, checkpoint_every=1)).run()
    with pytest.raises(IncompatibleModelError, match="lora_rank"):
        Trainer(
            _config(two_clips, tiny_model_dir, tmp_path / "o", max_steps=2, lora_rank=8, resume=True)
        ).run()
    other_base = tiny_pipeline_dir(tmp_path / "other_model", seed=1)
    with pytest.raises(IncompatibleModelError, match="different base model"):
        Trainer(_config(two_clips, other_base, tmp_path / "o", max_steps=2, resume=True)).run()
    with pytest.raises(Exception, match="no checkpoint"):
        Trainer(_config(two_clips, tiny_model_dir, tmp_path / "fresh", max_steps=2, resume=True)).run()


def test_disk_full_during_a_save_keeps_the_previous_checkpoint(
    tiny_model_dir, two_clips, tmp_path, monkeypatch
):
    out = tmp_path / "out"
    real_save = torch.save
    calls = {"n": 0}

    def failing_save(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 3:  # the first checkpoint (optimizer, scheduler, RNG) succeeds
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(DiskFullError, match="step-00000001 is kept"):
        Trainer(_config(two_clips, tiny_model_dir, out, max_steps=3, checkpoint_every=1)).run()
    monkeypatch.setattr(torch, "save", real_save)
    kept = latest_checkpoint(out)
    assert kept is not None and kept.name == "step-00000001"
    assert not list((out / "checkpoints").glob(".tmp-*"))
    resumed = Trainer(
        _config(two_clips, tiny_model_dir, out, max_steps=2, checkpoint_every=1, resume=True)
    ).run()
    assert resumed.steps == 2


def test_empty_and_damaged_data_sets_fail_before_training(tiny_model_dir, two_clips, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="holds no clips"):
        Trainer(_config(tmp_path / "empty", tiny_model_dir, tmp_path / "o1", max_steps=1)).run()
    bad = synthetic_dataset(tmp_path / "bad", clips=2, num_frames=4, size=32)
    next((bad / "clip_0001" / "target").iterdir()).unlink()
    with pytest.raises(DatasetError, match="clip_0001"):
        Trainer(_config(bad, tiny_model_dir, tmp_path / "o2", max_steps=1)).run()


def test_overfitting_one_fixed_batch_makes_the_loss_fall(tiny_model_dir, two_clips, tmp_path):
    from diffusers import WanTransformer3DModel
    from frameprompt.loading import load_pipeline
    from frameprompt.method import SequenceLayout
    from frameprompt.training.data import CachedClips, build_latent_cache, load_dataset
    from frameprompt.training.lora import add_lora
    from frameprompt.training.trainer import training_loss

    pipe = load_pipeline(tiny_model_dir, device="cpu")
    cache = build_latent_cache(pipe, load_dataset(two_clips), tmp_path / "cache")
    batch = {k: v[None] for k, v in CachedClips(cache)[0].items()}
    layout = SequenceLayout.for_models(4, 32, 32, pipe.vae, pipe.transformer)
    transformer = WanTransformer3DModel.from_pretrained(tiny_model_dir, subfolder="transformer")
    transformer.requires_grad_(False)
    add_lora(transformer, rank=8, alpha=8)
    transformer.train()
    optimizer = torch.optim.AdamW([p for p in transformer.parameters() if p.requires_grad], lr=2e-2)
    losses = []
    for _ in range(25):
        loss, _ = training_loss(transformer, batch, layout, torch.Generator().manual_seed(7))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0], losses


def test_full_finetune_saves_a_loadable_model_folder(tiny_model_dir, two_clips, tmp_path):
    result = Trainer(
        _config(two_clips, tiny_model_dir, tmp_path / "out", full=True, max_steps=2, checkpoint_every=1000)
    ).run()
    assert all(np.isfinite(result.losses))
    from frameprompt.loading import load_pipeline

    pipe = load_pipeline(result.output, device="cpu")
    assert json.loads((result.output / TRAINING_INFO).read_text())["kind"] == "full"
    reference, poses = demo_inputs(num_frames=4, size=32)
    assert pipe(reference, poses, num_inference_steps=2, output_type="np").frames.shape == (1, 4, 32, 32, 3)


def test_image_to_video_stage_with_ema_then_frameprompt_from_it(tiny_model_dir, two_clips, tmp_path):
    from frameprompt.loading import load_pipeline
    from frameprompt.training.trainer import EMA_MODEL_DIR

    stage1_settings = dict(
        full=True, max_steps=3, learning_rate=1e-3, objective="image_to_video", ema_decay=0.5,
        checkpoint_every=1000,
    )  # fmt: skip
    stage1 = Trainer(_config(two_clips, tiny_model_dir, tmp_path / "stage1", **stage1_settings)).run()
    assert all(np.isfinite(stage1.losses))
    ema_dir = tmp_path / "stage1" / EMA_MODEL_DIR
    info = json.loads((ema_dir / TRAINING_INFO).read_text())
    assert info["objective"] == "image_to_video" and info["ema_decay"] == 0.5
    live = load_file(str(stage1.output / "transformer" / "diffusion_pytorch_model.safetensors"))
    averaged = load_file(str(ema_dir / "transformer" / "diffusion_pytorch_model.safetensors"))
    assert live.keys() == averaged.keys()
    assert any(not torch.equal(live[k], averaged[k]) for k in live), "the EMA equals the live weights"

    # resuming the finished stage from its checkpoint writes the same EMA model again
    again = Trainer(
        _config(two_clips, tiny_model_dir, tmp_path / "stage1", **stage1_settings, resume=True)
    ).run()
    assert again.steps == 3
    rewritten = load_file(str(ema_dir / "transformer" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(averaged[k], rewritten[k]) for k in averaged)

    # Stage 2: FramePrompt fine-tuning starts from the Stage-1 EMA weights
    stage2 = Trainer(
        _config(two_clips, ema_dir, tmp_path / "stage2", full=True, max_steps=1, checkpoint_every=1000)
    ).run()
    pipe = load_pipeline(stage2.output, device="cpu")
    reference, poses = demo_inputs(num_frames=4, size=32)
    assert pipe(reference, poses, num_inference_steps=2, output_type="np").frames.shape == (1, 4, 32, 32, 3)


def test_ema_needs_full_training(tiny_model_dir, two_clips, tmp_path):
    from frameprompt.errors import FramePromptError

    with pytest.raises(FramePromptError, match="--full"):
        Trainer(_config(two_clips, tiny_model_dir, tmp_path / "out", max_steps=1, ema_decay=0.9)).run()


def test_context_cache_training_marks_the_result(tiny_model_dir, two_clips, tmp_path):
    pytest.importorskip("frameprompt.inference.context_cache")
    from diffusers import WanTransformer3DModel
    from frameprompt.inference.context_cache import apply_training_info, trained_with_context_cache

    trainer = Trainer(
        _config(
            two_clips, tiny_model_dir, tmp_path / "out", max_steps=2, checkpoint_every=10, context_cache=True
        )
    )
    result = trainer.run()
    assert all(np.isfinite(result.losses))
    assert type(trainer.transformer.blocks[0].attn1.processor).__name__ == "BlockCausalWanSelfAttnProcessor"
    transformer = WanTransformer3DModel.from_pretrained(tiny_model_dir, subfolder="transformer")
    assert apply_training_info(transformer, result.output) and trained_with_context_cache(transformer)


def test_finetune_command(tiny_model_dir, two_clips, tmp_path, capsys):
    from frameprompt.cli import main

    out = tmp_path / "out"
    args = ["finetune", "--data", str(two_clips), "--model", str(tiny_model_dir), "--out", str(out)]
    args += ["--lora-rank", "4", "--lora-alpha", "4", "--max-steps", "2", "--no-progress"]
    assert main(args) == 0
    assert (out / LORA_FILE).is_file() and "trained 2 steps" in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    args[2] = str(tmp_path / "empty")
    assert main(args) == 2
    assert "holds no clips" in capsys.readouterr().err


def test_all_frames_loss_and_a_failing_lora_write_during_a_checkpoint(
    tiny_model_dir, two_clips, tmp_path, monkeypatch
):
    from frameprompt.training import trainer as train_module
    from frameprompt.training.trainer import CheckpointError

    out = tmp_path / "out"
    result = Trainer(
        _config(two_clips, tiny_model_dir, out, max_steps=1, loss="all", checkpoint_every=1)
    ).run()
    assert np.isfinite(result.losses).all()

    def broken_save_lora(*args, **kwargs):
        raise RuntimeError("safetensors: I/O error while writing")

    monkeypatch.setattr(train_module, "save_lora", broken_save_lora)
    with pytest.raises(CheckpointError, match="step-00000001 is kept"):
        Trainer(
            _config(two_clips, tiny_model_dir, out, max_steps=2, loss="all", checkpoint_every=1, resume=True)
        ).run()
    assert latest_checkpoint(out).name == "step-00000001"
    assert not list((out / "checkpoints").glob(".tmp-*"))
