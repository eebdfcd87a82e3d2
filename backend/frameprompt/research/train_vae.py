"""Train a light `AutoencoderKLWan` from scratch as a per-frame image autoencoder (the embedded model's codec).

    python -m frameprompt.research.train_vae --data DATA [DATA ...] --out RUN/vae_run [--max-steps 4000] [--resume]

Why per frame: on a CPU the Wan VAE, not the transformer, is the bottleneck, and at 64x64 the 8x
spatial / 4x temporal Wan2.1 codec is too coarse for limbs (`shared/notes/small-model-on-cpu.md`).
The model here is the same diffusers class with 4x spatial and no temporal downsampling
(`temperal_downsample=[False, False]`, `scale_factor_temporal=1`, `scale_factor_spatial=4`), so every
frame has its own 16-channel latent of (H/4, W/4) and the FramePrompt layout gives L = 1 + 2N latent
frames and a transformer with 2 * 16 + 1 = 33 input channels (mask with T = 1 channel).

Its causal 3x3x3 convolutions would still mix each frame with the two before it. We zero their
past-time taps and keep them at zero, so the codec is exactly frame-wise: a frame encodes the same in
any video (reference, skeleton or target), and training can run every such convolution as a 2D
convolution on its last tap (`framewise`), about 3x faster on CPU and identical to diffusers' own
forward up to float rounding (a test checks 1e-5).

Loss: L1 + MSE on pixels (with more weight where the pixel differs from the frame's border colour,
i.e. on the character) + a small KL term. Frames: every reference and target PNG of the data sets
and the drawn skeletons of some clips, random crops (default 48x48) for speed; the autoencoder is
fully convolutional, so it runs on whole frames afterwards.

Checkpoints `<out>/checkpoints/step_XXXXXXX/` (model + optimizer + RNG + step, written to a temporary
folder and renamed), `<out>/latest`, a CSV log and `<out>/vae/` (diffusers `save_pretrained`, with the
per-channel `latents_mean` / `latents_std` measured on the data, so latents are ~N(0, 1) after the
pipeline's normalisation).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import random
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLWan
from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d
from safetensors.torch import load_file, save_file

LOG_FIELDS = ["step", "loss", "l1", "mse", "kl", "lr", "seconds"]


@dataclass
class VAETrainConfig:
    data: list[str]
    out: str
    base_dim: int = 32
    dim_mult: list[int] = field(default_factory=lambda: [1, 2, 2])
    num_res_blocks: int = 1
    z_dim: int = 16
    batch_size: int = 16
    crop: int = 48
    learning_rate: float = 5e-4
    warmup_steps: int = 100
    max_steps: int = 4000
    kl_weight: float = 1e-6
    foreground_weight: float = 4.0
    skeleton_clips: int = 200
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    seed: int = 0
    resume: bool = False
    threads: int | None = None

    def vae_config(self) -> dict:
        n = len(self.dim_mult)
        return dict(
            base_dim=self.base_dim,
            z_dim=self.z_dim,
            dim_mult=list(self.dim_mult),
            num_res_blocks=self.num_res_blocks,
            temperal_downsample=[False] * (n - 1),
            scale_factor_temporal=1,
            scale_factor_spatial=2 ** (n - 1),
        )


# --- the frame-wise codec ------------------------------------------------------------------------
def zero_past_taps(vae: AutoencoderKLWan) -> None:
    """Zero the taps of every causal 3D convolution that look at earlier frames."""
    with torch.no_grad():
        for m in vae.modules():
            if isinstance(m, WanCausalConv3d) and m.weight.shape[2] > 1:
                m.weight[:, :, :-1] = 0


def is_framewise(vae: AutoencoderKLWan, atol: float = 0.0) -> bool:
    return all(
        m.weight[:, :, :-1].abs().max().item() <= atol
        for m in vae.modules()
        if isinstance(m, WanCausalConv3d) and m.weight.shape[2] > 1
    )


def _framewise_forward(
    self: WanCausalConv3d, x: torch.Tensor, cache_x: torch.Tensor | None = None
) -> torch.Tensor:
    b, c, t, h, w = x.shape
    x2 = x.transpose(1, 2).reshape(b * t, c, h, w)
    p = self._padding
    if p[0] or p[2]:
        x2 = F.pad(x2, (p[0], p[1], p[2], p[3]))
    y = F.conv2d(x2, self.weight[:, :, -1], self.bias, self.stride[1:])
    return y.reshape(b, t, *y.shape[1:]).transpose(1, 2)


@contextlib.contextmanager
def framewise(vae: AutoencoderKLWan | None = None) -> Iterator[None]:
    """Run every `WanCausalConv3d` as a 2D convolution on its last time tap (exact when the past taps are
    zero: `zero_past_taps`). Patches the class for the duration of the block."""
    if vae is not None and not is_framewise(vae):
        raise ValueError("framewise() needs a VAE whose past-time taps are zero (zero_past_taps)")
    original = WanCausalConv3d.forward
    WanCausalConv3d.forward = _framewise_forward
    try:
        yield
    finally:
        WanCausalConv3d.forward = original


# --- data ------------------------------------------------------------------------------------
def load_frames(roots: list[str], skeleton_clips: int = 200, seed: int = 0) -> torch.Tensor:
    """Every reference and target frame of the data sets (+ the skeletons of `skeleton_clips` clips)
    as a uint8 tensor (M, 3, H, W)."""
    from frameprompt.training.data import clip_skeleton_images, validate_dataset

    frames: list[np.ndarray] = []
    clips = []
    for root in roots:
        report = validate_dataset(root, temporal_factor=1, spatial_multiple=8)
        clips.extend(report.clips)
    if not clips:
        raise ValueError(f"no valid clips in {roots}")
    for clip in clips:
        frames.append(np.asarray(PIL.Image.open(clip.path / "reference.png").convert("RGB")))
        frames.extend(np.asarray(PIL.Image.open(f).convert("RGB")) for f in clip.target_files)
    rng = random.Random(seed)
    for clip in rng.sample(clips, min(skeleton_clips, len(clips))):
        frames.extend(np.asarray(im) for im in clip_skeleton_images(clip))
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).contiguous()


def _batch(frames: torch.Tensor, size: int, crop: int, generator: torch.Generator) -> torch.Tensor:
    """(B, 3, 1, crop, crop) in [-1, 1]: random frames, random crops, random horizontal flips."""
    idx = torch.randint(0, frames.shape[0], (size,), generator=generator)
    h, w = frames.shape[-2:]
    crop_h, crop_w = min(crop, h), min(crop, w)
    out = []
    for i in idx.tolist():
        y = int(torch.randint(0, h - crop_h + 1, (1,), generator=generator))
        x = int(torch.randint(0, w - crop_w + 1, (1,), generator=generator))
        f = frames[i, :, y : y + crop_h, x : x + crop_w]
        if torch.rand((), generator=generator) < 0.5:
            f = f.flip(-1)
        out.append(f)
    return (torch.stack(out).float() / 127.5 - 1.0).unsqueeze(2)


def foreground_weights(x: torch.Tensor, weight: float) -> torch.Tensor:
    """1 on background, `weight` where a pixel differs from its frame's median border colour."""
    border = torch.cat([x[..., 0, :], x[..., -1, :], x[..., :, 0], x[..., :, -1]], dim=-1)  # (B,3,1,P)
    colour = border.median(dim=-1, keepdim=True).values.unsqueeze(-1)
    fg = ((x - colour).abs().amax(dim=1, keepdim=True) > 0.12).float()
    return 1.0 + (weight - 1.0) * fg


def vae_loss(vae: AutoencoderKLWan, x: torch.Tensor, config: VAETrainConfig, generator=None) -> dict:
    posterior = vae.encode(x).latent_dist
    z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
    y = vae.decode(z).sample
    w = foreground_weights(x, config.foreground_weight)
    l1 = (w * (y - x).abs()).mean() / w.mean()
    mse = (w * (y - x) ** 2).mean() / w.mean()
    kl = posterior.kl().mean() / x[0].numel()
    return {"loss": l1 + mse + config.kl_weight * kl, "l1": l1, "mse": mse, "kl": kl}


# --- checkpoints -------------------------------------------------------------------------------
def _latest(out: Path) -> Path | None:
    marker = out / "latest"
    if marker.is_file():
        path = out / "checkpoints" / marker.read_text().strip()
        if (path / "state.json").is_file():
            return path
    return None


def _save_checkpoint(out: Path, vae, optimizer, step: int, generator: torch.Generator, config) -> Path:
    ckpts = out / "checkpoints"
    ckpts.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:07d}"
    tmp = ckpts / f".tmp-{name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(tmp / "vae.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save({"generator": generator.get_state(), "torch": torch.get_rng_state()}, tmp / "rng.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step, "config": asdict(config)}, indent=1))
    final = ckpts / name
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    marker = out / "latest.tmp"
    marker.write_text(name)
    os.replace(marker, out / "latest")
    old = sorted(p for p in ckpts.iterdir() if p.name.startswith("step_"))
    for p in old[: max(0, len(old) - config.keep_checkpoints)]:
        shutil.rmtree(p, ignore_errors=True)
    return final


@torch.no_grad()
def latent_statistics(vae: AutoencoderKLWan, frames: torch.Tensor, count: int = 512, seed: int = 0):
    """Per-channel mean and std of the posterior mode over `count` whole frames."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(frames.shape[0], generator=g)[:count]
    zs = []
    with framewise(vae):
        for chunk in idx.split(64):
            x = (frames[chunk].float() / 127.5 - 1.0).unsqueeze(2)
            zs.append(vae.encode(x).latent_dist.mode())
    z = torch.cat(zs).transpose(0, 1).reshape(vae.config.z_dim, -1)
    return z.mean(1).tolist(), z.std(1).clamp_min(1e-3).tolist()


def export_vae(vae: AutoencoderKLWan, frames: torch.Tensor, folder: Path) -> Path:
    """save_pretrained with latents_mean/std measured on the data."""
    mean, std = latent_statistics(vae, frames)
    vae.register_to_config(latents_mean=mean, latents_std=std)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    vae.save_pretrained(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return folder


# --- loop ------------------------------------------------------------------------------------
def train_vae(config: VAETrainConfig, frames: torch.Tensor | None = None) -> Path:
    """Train (or resume) and export `<out>/vae`; returns that folder."""
    if config.threads:
        torch.set_num_threads(config.threads)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    vae = AutoencoderKLWan(**config.vae_config())
    zero_past_taps(vae)
    optimizer = torch.optim.AdamW(
        vae.parameters(), lr=config.learning_rate, weight_decay=0.0, betas=(0.9, 0.99)
    )
    generator = torch.Generator().manual_seed(config.seed)
    step = 0
    latest = _latest(out) if config.resume else None
    if config.resume and latest is None and (out / "checkpoints").exists():
        raise RuntimeError(f"--resume: no complete checkpoint in {out}")
    if latest is not None:
        state = json.loads((latest / "state.json").read_text())
        saved = state["config"]
        for key in ("base_dim", "dim_mult", "num_res_blocks", "z_dim"):
            if saved[key] != getattr(config, key):
                raise RuntimeError(
                    f"--resume: checkpoint has {key}={saved[key]}, config {getattr(config, key)}"
                )
        vae.load_state_dict(load_file(str(latest / "vae.safetensors")))
        optimizer.load_state_dict(torch.load(latest / "optimizer.pt"))
        rng = torch.load(latest / "rng.pt")
        generator.set_state(rng["generator"])
        torch.set_rng_state(rng["torch"])
        step = state["step"]
        print(f"resumed from {latest} (step {step})", flush=True)
    elif (out / "train_log.csv").exists():
        (out / "train_log.csv").unlink()
    (out / "config.json").write_text(json.dumps(asdict(config), indent=1))
    if frames is None:
        t0 = time.time()
        frames = load_frames(config.data, config.skeleton_clips, config.seed)
        print(f"{frames.shape[0]} frames loaded in {time.time() - t0:.0f} s", flush=True)
    params = sum(p.numel() for p in vae.parameters())
    print(f"AutoencoderKLWan {config.vae_config()}: {params:,} parameters", flush=True)

    log_path = out / "train_log.csv"
    new_log = not log_path.exists()

    def lr_at(s: int) -> float:
        warm = min(1.0, (s + 1) / max(1, config.warmup_steps))
        progress = min(1.0, s / max(1, config.max_steps))
        return config.learning_rate * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    vae.train()
    start = time.time()
    with framewise(vae), open(log_path, "a", newline="") as log:
        writer = csv.DictWriter(log, fieldnames=LOG_FIELDS)
        if new_log:
            writer.writeheader()
        while step < config.max_steps:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step)
            x = _batch(frames, config.batch_size, config.crop, generator)
            losses = vae_loss(vae, x, config, generator)
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            for m in vae.modules():  # keep the codec frame-wise
                if isinstance(m, WanCausalConv3d) and m.weight.shape[2] > 1 and m.weight.grad is not None:
                    m.weight.grad[:, :, :-1] = 0
            torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
            optimizer.step()
            step += 1
            writer.writerow(
                {
                    "step": step,
                    **{k: f"{v.item():.6f}" for k, v in losses.items()},
                    "lr": f"{lr_at(step - 1):.3e}",
                    "seconds": f"{time.time() - start:.1f}",
                }
            )
            if step % 20 == 0:
                log.flush()
                print(
                    f"step {step}/{config.max_steps} loss {float(losses['loss']):.4f} "
                    f"l1 {float(losses['l1']):.4f} ({time.time() - start:.0f} s)",
                    flush=True,
                )
            if step % config.checkpoint_every == 0 or step == config.max_steps:
                zero_past_taps(vae)
                _save_checkpoint(out, vae, optimizer, step, generator, config)
    vae.eval()
    zero_past_taps(vae)
    return export_vae(vae, frames, out / "vae")


@torch.no_grad()
def reconstruction_psnr(vae: AutoencoderKLWan, frames: torch.Tensor) -> float:
    """Mean PSNR (dB, [0, 255]) of encode(mode) -> decode over whole frames (uint8 (M, 3, H, W))."""
    values = []
    with framewise(vae):
        for chunk in frames.split(64):
            x = (chunk.float() / 127.5 - 1.0).unsqueeze(2)
            y = vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1)
            mse = (((y - x) * 127.5) ** 2).flatten(1).mean(1)
            values.extend((10 * torch.log10(255.0**2 / mse.clamp_min(1e-10))).tolist())
    return float(np.mean(values))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m frameprompt.research.train_vae", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--data", nargs="+", required=True, help="data set folder(s) (docs/dataset.md)")
    parser.add_argument("--out", required=True, help="run folder (checkpoints, log, vae/)")
    parser.add_argument("--base-dim", type=int, default=32)
    parser.add_argument(
        "--dim-mult", default="1,2,2", help="comma list; its length - 1 = log2(spatial factor)"
    )
    parser.add_argument("--num-res-blocks", type=int, default=1)
    parser.add_argument("--z-dim", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--crop", type=int, default=48, help="random crop size for training (default 48)")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--max-steps", type=int, default=4000)
    parser.add_argument("--checkpoint-every", type=int, default=200)
    parser.add_argument("--skeleton-clips", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--resume", action="store_true", help="continue from <out>/latest")
    parser.add_argument("--eval-data", help="a held-out data set: print the reconstruction PSNR at the end")
    args = parser.parse_args(argv)
    config = VAETrainConfig(
        data=args.data,
        out=args.out,
        base_dim=args.base_dim,
        dim_mult=[int(v) for v in args.dim_mult.split(",")],
        num_res_blocks=args.num_res_blocks,
        z_dim=args.z_dim,
        batch_size=args.batch_size,
        crop=args.crop,
        learning_rate=args.lr,
        max_steps=args.max_steps,
        checkpoint_every=args.checkpoint_every,
        skeleton_clips=args.skeleton_clips,
        seed=args.seed,
        resume=args.resume,
        threads=args.threads,
    )
    folder = train_vae(config)
    print(f"VAE saved to {folder}", flush=True)
    if args.eval_data:
        vae = AutoencoderKLWan.from_pretrained(folder).eval()
        frames = load_frames([args.eval_data], skeleton_clips=0)
        psnr = reconstruction_psnr(vae, frames)
        print(f"held-out reconstruction PSNR {psnr:.2f} dB over {frames.shape[0]} frames", flush=True)
        (Path(args.out) / "eval.json").write_text(json.dumps({"psnr_db": psnr, "frames": frames.shape[0]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
