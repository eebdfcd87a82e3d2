"""Baselines for the paper's Table 1 at small scale. NOT on the product path (nothing imports this).

Both use the same diffusers `WanTransformer3DModel` size as the default model, the same light VAE, the
same latent cache (the FramePrompt cache holds every needed latent because the codec is frame-wise:
x0 = [reference | N skeleton latents | N target latents]), the same flow-matching objective (noise and
loss on the target frames, clean reference frame 0, shifted sigmas), optimizer, steps and seed:

* ``concat`` (VideoX-Fun's Fun-Control): the I2V sequence [reference | N targets] (L = 1 + N), and the
  skeleton latents concatenated on the channels, frame-aligned with the targets (zeros at frame 0):
  in_channels = z (x_t) + 1 (mask) + z (I2V condition) + z (skeleton) = 49.
* ``residual`` (UniAnimate-DiT): the same I2V sequence and 33 input channels; a Conv3d skeleton
  encoder turns the skeleton sequence into one feature per token, added to the patch embeddings
  (token-wise residual). Its last layer starts at zero, so training starts from plain I2V.
  Deviation: it reads the skeletons' *latents* (16 x H/4 x W/4), not pixels as UniAnimate-DiT does,
  so it needs no extra pixel data at training time; documented in docs/results.md.

FramePrompt's "all frames" loss ablation is `frameprompt finetune --loss all`.

    python -m frameprompt.research.baselines train --kind concat --cache RUN/tr/latent_cache --model RUN/init_model \
        --out RUN/baseline_concat --max-steps 1500 [--resume]
    python -m frameprompt.research.baselines predict --kind concat --run RUN/baseline_concat --model RUN/init_model \
        --data RUN/data_test --out RUN/eval/concat
    python -m frameprompt.research.baselines table --run RUN/table1    # all of it: scripts/train_baselines.sh
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from diffusers import WanTransformer3DModel
from safetensors.torch import load_file, save_file
from torch import nn

from frameprompt import method
from frameprompt.method import SequenceLayout
from frameprompt_blender.core.frame_names import frame_name

KINDS = ("concat", "residual")


class PoseResidual(nn.Module):
    """UniAnimate-DiT-style Conv3d skeleton encoder: (B, z, F, h, w) -> (B, dim, F, h/p, w/p)."""

    def __init__(self, z_dim: int, dim: int, patch: tuple[int, int, int] = (1, 2, 2)) -> None:
        super().__init__()
        to_tokens = nn.Conv3d(64, dim, patch, stride=patch)
        self.net = nn.Sequential(
            nn.Conv3d(z_dim, 64, 3, padding=1),
            nn.SiLU(),
            nn.Conv3d(64, 64, 3, padding=1),
            nn.SiLU(),
            to_tokens,
        )
        nn.init.zeros_(to_tokens.weight)
        nn.init.zeros_(to_tokens.bias)  # type: ignore[arg-type]  # a Conv3d built with bias

    def forward(self, pose: torch.Tensor) -> torch.Tensor:
        return self.net(pose)


class BaselineModel(nn.Module):
    """A Wan transformer on the I2V sequence [reference | targets] plus the skeleton, as `kind` says."""

    def __init__(self, kind: str, transformer_config: dict, z_dim: int = 16) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        self.kind, self.z_dim = kind, z_dim
        config = {k: v for k, v in transformer_config.items() if not k.startswith("_")}
        config["in_channels"] = 2 * z_dim + 1 + (z_dim if kind == "concat" else 0)
        config["out_channels"] = z_dim
        self.transformer = WanTransformer3DModel(**config)
        self.pose_encoder: PoseResidual | None = None
        if kind == "residual":
            dim = config["num_attention_heads"] * config["attention_head_dim"]
            self.pose_encoder = PoseResidual(z_dim, dim, tuple(config["patch_size"]))
        self._pose_features: torch.Tensor | None = None
        self.transformer.patch_embedding.register_forward_hook(self._add_pose)

    def _add_pose(self, module, inputs, output):
        if self._pose_features is None:
            return output
        return output + self._pose_features.to(output.dtype)

    def forward(
        self,
        x_t: torch.Tensor,
        reference_condition: torch.Tensor,
        pose: torch.Tensor,
        timestep: torch.Tensor,
        text: torch.Tensor,
    ) -> torch.Tensor:
        """x_t (B, z, 1+N, h, w) with the clean reference latent at frame 0; reference_condition the
        I2V condition latents (reference, then encoded black frames); pose (B, z, N, h, w)."""
        b, _, f, h, w = x_t.shape
        mask = torch.zeros(b, 1, f, h, w, dtype=x_t.dtype, device=x_t.device)
        mask[:, :, 0] = 1
        pose_full = torch.cat([torch.zeros_like(pose[:, :, :1]), pose], dim=2)
        parts = [x_t, mask, reference_condition]
        if self.kind == "concat":
            parts.append(pose_full)
        else:
            assert self.pose_encoder is not None  # kind == "residual"
            self._pose_features = self.pose_encoder(pose_full)
        try:
            return self.transformer(
                hidden_states=torch.cat(parts, dim=1),
                timestep=timestep,
                encoder_hidden_states=text,
                return_dict=False,
            )[0]
        finally:
            self._pose_features = None


def load_pretrained_i2v(model: BaselineModel, pipeline_dir: str | Path) -> None:
    """Start `model` from the I2V transformer of `pipeline_dir`; extra input channels start at zero."""
    pretrained = WanTransformer3DModel.from_pretrained(pipeline_dir, subfolder="transformer").state_dict()
    own = model.transformer.state_dict()
    key = "patch_embedding.weight"
    if own[key].shape != pretrained[key].shape:  # concat: (dim, 49, ...) from (dim, 33, ...)
        widened = torch.zeros_like(own[key])
        widened[:, : pretrained[key].shape[1]] = pretrained[key]
        pretrained[key] = widened
    model.transformer.load_state_dict(pretrained, strict=True)


def split_cached(batch: dict[str, torch.Tensor], n: int) -> tuple[torch.Tensor, ...]:
    """FramePrompt cache item -> (I2V x0 [ref | targets], I2V condition, skeleton latents)."""
    x0, cond = batch["x0"], batch["condition"]
    i2v_x0 = torch.cat([x0[:, :, :1], x0[:, :, 1 + n :]], dim=2)
    i2v_cond = torch.cat([cond[:, :, :1], cond[:, :, 1 + n :]], dim=2)
    return i2v_x0, i2v_cond, x0[:, :, 1 : 1 + n]


def baseline_loss(
    model: BaselineModel, batch: dict, n: int, generator: torch.Generator, flow_shift: float = 3.0
):
    x0, cond, pose = split_cached(batch, n)
    b = x0.shape[0]
    sigmas = method.sample_sigmas(b, shift=flow_shift, generator=generator)
    noise = torch.randn(x0.shape, generator=generator)
    s = sigmas.view(b, 1, 1, 1, 1)
    x_t = x0.clone()
    x_t[:, :, 1:] = (1 - s) * x0[:, :, 1:] + s * noise[:, :, 1:]
    pred = model(x_t, cond, pose, sigmas * 1000.0, batch["text"])
    return torch.nn.functional.mse_loss(pred[:, :, 1:], (noise - x0)[:, :, 1:])


def _save(out: Path, model, optimizer, step: int, config: dict) -> None:
    tmp = out / ".tmp-checkpoint"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step, "config": config}, indent=1))
    shutil.rmtree(out / "checkpoint", ignore_errors=True)
    os.replace(tmp, out / "checkpoint")


def train_baseline(
    kind: str,
    cache_dir: str | Path,
    model_dir: str | Path,
    out: str | Path,
    max_steps: int,
    batch_size: int = 8,
    lr: float = 3e-4,
    warmup_steps: int = 100,
    seed: int = 0,
    checkpoint_every: int = 100,
    resume: bool = False,
    init: str | Path | None = None,
) -> Path:
    """Train a baseline on the FramePrompt latent cache with the default model's transformer size.

    `init`: a pipeline folder (e.g. the Stage-1 image-to-video model) whose transformer the baseline
    starts from, as Fun-Control and UniAnimate-DiT start from a pretrained I2V model; the skeleton
    channels that `concat` adds start at zero, so step 0 is exactly that I2V model."""
    from frameprompt.training.data import CachedClips, LatentCache

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    transformer_config = json.loads((Path(model_dir) / "transformer" / "config.json").read_text())
    manifest = json.loads((Path(cache_dir) / "manifest.json").read_text())
    names = sorted(manifest["clips"])
    n = manifest["key"]["num_frames"]
    null_text = load_file(str(Path(cache_dir) / "null_text.safetensors"))["null_text"]
    cache = LatentCache(Path(cache_dir), names, n, 0, 0, null_text)
    data = CachedClips(cache)
    torch.manual_seed(seed)
    model = BaselineModel(kind, transformer_config, z_dim=transformer_config["out_channels"])
    if init is not None:
        load_pretrained_i2v(model, init)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    step = 0
    if resume and (out / "checkpoint" / "state.json").is_file():
        model.load_state_dict(load_file(str(out / "checkpoint" / "model.safetensors")))
        optimizer.load_state_dict(torch.load(out / "checkpoint" / "optimizer.pt"))
        step = json.loads((out / "checkpoint" / "state.json").read_text())["step"]
    config = {"kind": kind, "batch_size": batch_size, "lr": lr, "seed": seed, "num_frames": n}
    model.train()
    log_new = not (out / "train_log.csv").exists() or step == 0
    started = time.perf_counter()
    with open(out / "train_log.csv", "w" if log_new else "a", newline="") as log:
        writer = csv.writer(log)
        if log_new:
            writer.writerow(["step", "loss", "seconds"])
        while step < max_steps:
            # the same seeded order/noise scheme as the trainer: one permutation per epoch, one generator per step
            per_epoch = len(data) // batch_size
            epoch, index = divmod(step, per_epoch)
            order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed + epoch))
            items = [data[int(i)] for i in order[index * batch_size : (index + 1) * batch_size]]
            batch = {k: torch.stack([it[k] for it in items]) for k in items[0]}
            generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
            for group in optimizer.param_groups:
                group["lr"] = lr * min(1.0, (step + 1) / max(1, warmup_steps))
            loss = baseline_loss(model, batch, n, generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            step += 1
            writer.writerow([step, f"{loss.item():.6g}", f"{time.perf_counter() - started:.1f}"])
            if step % checkpoint_every == 0 or step == max_steps:
                log.flush()
                _save(out, model, optimizer, step, config)
    return out


@torch.no_grad()
def generate(
    model: BaselineModel, vae, reference: torch.Tensor, skeleton: torch.Tensor, steps: int = 20, seed: int = 0
):
    """reference (1,3,1,H,W), skeleton (1,3,N,H,W) in [-1,1] -> (1,3,N,H,W) frames in [-1,1]."""
    from frameprompt.inference.pipeline import default_scheduler
    from frameprompt.research.train_vae import framewise
    from frameprompt.vae_io import denormalize_latents, encode_video

    n = skeleton.shape[2]

    def per_frame(video: torch.Tensor) -> torch.Tensor:
        # the frame-wise codec encodes any frame count when frames go on the batch axis
        b, c, f, h, w = video.shape
        z = encode_video(vae, video.transpose(1, 2).reshape(b * f, c, 1, h, w))
        return z.reshape(b, f, *z.shape[1:2], *z.shape[-2:]).transpose(1, 2)

    with framewise(vae):
        ref = per_frame(reference)
        pose = per_frame(skeleton)
        black = per_frame(torch.zeros_like(skeleton))
    cond = torch.cat([ref, black], dim=2)
    scheduler = default_scheduler()
    scheduler.set_timesteps(steps)
    g = torch.Generator().manual_seed(seed)
    lat = torch.randn((1, ref.shape[1], n, *ref.shape[-2:]), generator=g)
    text = torch.zeros(1, 1, model.transformer.config.text_dim)
    model.eval()
    for t in scheduler.timesteps:
        v = model(torch.cat([ref, lat], dim=2), cond, pose, t.expand(1).float(), text)
        lat = scheduler.step(v[:, :, 1:], t, lat).prev_sample
    z = denormalize_latents(lat, vae)
    b, c, f, h, w = z.shape
    with framewise(vae):
        frames = vae.decode(z.transpose(1, 2).reshape(b * f, c, 1, h, w)).sample.clamp(-1, 1)
    return frames.reshape(b, f, *frames.shape[1:2], *frames.shape[-2:]).transpose(1, 2)


def predict(
    kind: str, run: str | Path, model_dir: str | Path, data: str | Path, out: str | Path, limit=None, steps=20
):
    from diffusers import AutoencoderKLWan

    from frameprompt.training.data import load_clip_pixels, load_dataset

    transformer_config = json.loads((Path(model_dir) / "transformer" / "config.json").read_text())
    model = BaselineModel(kind, transformer_config, z_dim=transformer_config["out_channels"])
    model.load_state_dict(load_file(str(Path(run) / "checkpoint" / "model.safetensors")))
    vae = AutoencoderKLWan.from_pretrained(Path(model_dir) / "vae").eval()
    multiples = SequenceLayout.multiples_for(vae, model.transformer)
    for clip in load_dataset(data, *multiples)[:limit]:
        reference, skeleton, _ = load_clip_pixels(clip)
        video = generate(model, vae, reference, skeleton, steps=steps)
        frames = ((video[0].permute(1, 2, 3, 0).numpy() + 1) * 127.5).round().astype(np.uint8)
        folder = Path(out) / clip.name
        folder.mkdir(parents=True, exist_ok=True)
        for i, frame in enumerate(frames):
            PIL.Image.fromarray(frame).save(folder / frame_name(i))


TABLE_ROWS = {
    "concat": "channel concatenation (Fun-Control)",
    "residual": "token-wise pose residual (UniAnimate-DiT)",
    "frameprompt_all": "FramePrompt, all-frames loss",
    "frameprompt": "**FramePrompt** (target-frames loss)",
}
BARS = {
    "repeat_reference": "reference frame repeated (lower bar)",
    "vae_reconstruction": "VAE reconstruction of the ground truth (upper bar)",
}


def results_table(table_dir: str | Path) -> str:
    """Table 1 in Markdown from `scripts/train_baselines.sh`'s metrics: <dir>/metrics/[step<S>/]<name>/."""
    metrics_dir = Path(table_dir) / "metrics"

    def row(label: str, steps: str, folder: Path) -> str | None:
        if not (folder / "metrics.json").is_file():
            return None
        means = json.loads((folder / "metrics.json").read_text())
        region_file = folder / "region.json"
        # `default_model region` writes {prediction folder name: values}
        region = next(iter(json.loads(region_file.read_text()).values())) if region_file.is_file() else {}

        def fmt(value: float | None, digits: int) -> str:
            return "n/a" if value is None else f"{value:.{digits}f}"

        cells = [fmt(means["ssim"], 4), fmt(means["psnr"], 2)]
        cells += [fmt(region.get(f"{k}_psnr"), 2) for k in ("moving", "static", "character")]
        cells += [fmt(means["lpips"], 4), fmt(means["fvd"], 1)]
        return f"| {label} | {steps} | " + " | ".join(cells) + " |"

    lines = [
        "| method | steps | SSIM ↑ | PSNR (dB) ↑ | moving PSNR ↑ | static PSNR ↑ | character PSNR ↑ "
        "| LPIPS ↓ | FVD ↓ |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    bars = {name: row(label, "–", metrics_dir / name) for name, label in BARS.items()}
    budgets = sorted(
        (int(p.name.removeprefix("step")) for p in metrics_dir.glob("step*") if p.name[4:].isdigit()),
    )
    rows = [bars["repeat_reference"]]
    for budget in budgets:
        rows += [
            row(label, f"{budget:,}", metrics_dir / f"step{budget}" / name)
            for name, label in TABLE_ROWS.items()
        ]
    rows.append(bars["vae_reconstruction"])
    return "\n".join(lines + [r for r in rows if r is not None]) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m frameprompt.research.baselines")
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("train")
    p.add_argument("--kind", choices=KINDS, required=True)
    p.add_argument("--cache", required=True, help="the FramePrompt latent cache (<run>/tr/latent_cache)")
    p.add_argument("--model", required=True, help="the init pipeline folder (transformer size, VAE)")
    p.add_argument("--out", required=True)
    p.add_argument("--max-steps", type=int, required=True)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--init", help="start from this pipeline's transformer (the Stage-1 I2V model)")
    p = sub.add_parser("predict")
    p.add_argument("--kind", choices=KINDS, required=True)
    p.add_argument("--run", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--limit", type=int)
    p.add_argument("--steps", type=int, default=20)
    p = sub.add_parser("table", help="Table 1 in Markdown from scripts/train_baselines.sh's metrics")
    p.add_argument("--run", required=True, help="the table folder (<run>/table1)")
    args = parser.parse_args(argv)
    if args.action == "table":
        print(results_table(args.run), end="")
    elif args.action == "train":
        train_baseline(
            args.kind, args.cache, args.model, args.out, args.max_steps, args.batch_size, args.lr,
            seed=args.seed, resume=args.resume, init=args.init,
        )  # fmt: skip
    else:
        predict(args.kind, args.run, args.model, args.data, args.out, args.limit, args.steps)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
