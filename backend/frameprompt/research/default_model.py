"""The recipe of the embedded default model: the steps `scripts/train_default_model.sh` runs.

    python -m frameprompt.research.default_model init    --vae RUN/vae_run/vae --out RUN/init_model
    python -m frameprompt.research.default_model cache   --model RUN/init_model --data RUN/data_train --cache RUN/tr/latent_cache
    frameprompt finetune --full --model RUN/init_model --data RUN/data_train --out RUN/tr ...   (the project's trainer)
    python -m frameprompt.research.default_model predict --model RUN/tr/model --data RUN/data_test --out RUN/eval/pred ...
    python -m frameprompt.research.default_model export  --model RUN/tr/model --dest backend/frameprompt/default_model

* `init`: a FramePromptPipeline with the trained light VAE (`frameprompt.research.train_vae`), a small randomly
  initialised `WanTransformer3DModel` in the I2V layout (in_channels = 2 z_dim + T, here 2*16+1 = 33:
  the VAE has no temporal compression, so the mask has T = 1 channel; with Wan2.1's VAE it is 36), no
  CLIP branch, no text encoder (the null text embedding), and the UniPC flow scheduler.
* `cache`: the trainer's own latent cache (`frameprompt.training.data.build_latent_cache`), built with the VAE's
  convolutions run frame-wise (`train_vae.framewise`, exact for this codec, ~3x faster on CPU); the
  trainer then finds every clip cached and skips encoding.
* `predict`: generates every held-out clip with the pipeline, and writes the two trivial references
  beside it (the reference frame repeated N times; the VAE reconstruction of the ground truth), each
  as `<folder>/<clip>/0000.png ...`, ready for `frameprompt evaluate --pred ... --gt ...`.
* `export`: copies the pipeline into the package (safetensors only, <= 50 MB checked).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from frameprompt.media import contact_sheet
from frameprompt.method import SequenceLayout
from frameprompt_blender.core.frame_names import frame_name

# 1.23 M parameters (4 layers x 128 wide); at 64x64, N=8 a clip is 17 latent frames x 64 tokens = 1088
# tokens, and a batch of 8 costs ~2-3 s per step on 2 CPU threads; see docs/model_card.md
TRANSFORMER_CONFIG = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=4,
    attention_head_dim=32,
    out_channels=16,
    text_dim=16,
    freq_dim=64,
    ffn_dim=512,
    num_layers=4,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
    image_dim=None,
    added_kv_proj_dim=None,
    rope_max_seq_len=64,
)
MAX_SHIPPED_BYTES = 50 * 1024 * 1024
# frame and size multiples for data that is only read (metrics, pictures), never encoded: any clip
ANY_CLIP = (1, 1)


def init_model(vae_dir: str | Path, out: str | Path, seed: int = 0, **overrides) -> Path:
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    from frameprompt.inference.pipeline import FramePromptPipeline, default_scheduler

    vae = AutoencoderKLWan.from_pretrained(vae_dir).eval()
    config = {**TRANSFORMER_CONFIG, **overrides}
    config["in_channels"] = 2 * vae.config.z_dim + int(vae.config.scale_factor_temporal)
    config["out_channels"] = vae.config.z_dim
    torch.manual_seed(seed)
    transformer = WanTransformer3DModel(**config)
    pipe = FramePromptPipeline(vae=vae, transformer=transformer, scheduler=default_scheduler())
    # Without a CLIP branch, cross-attention over 512 all-zero text tokens equals cross-attention over
    # one (softmax of equal logits averages identical values): store one token and save ~20 % per step.
    pipe.null_prompt_embeds = torch.zeros(1, 1, config["text_dim"])
    out = Path(out)
    pipe.save_pretrained(out)
    params = sum(p.numel() for p in transformer.parameters())
    print(f"init model in {out}: transformer {params:,} parameters, in_channels {config['in_channels']}")
    return out


def build_cache(model: str | Path, data: str | Path, cache_dir: str | Path) -> None:
    from frameprompt.loading import load_pipeline
    from frameprompt.research.train_vae import framewise
    from frameprompt.training.data import build_latent_cache, load_dataset

    pipe = load_pipeline(model, device="cpu")
    clips = load_dataset(data, *SequenceLayout.multiples_for(pipe.vae, pipe.transformer))
    from tqdm.auto import tqdm

    t0 = time.time()
    with framewise(pipe.vae):
        build_latent_cache(
            pipe,
            clips,
            cache_dir,
            progress=lambda items: tqdm(items, desc="encode clips"),
            frame_independent=True,
        )
    print(f"cached {len(clips)} clips in {time.time() - t0:.0f} s")


def _save_frames(frames, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(frames):
        if isinstance(frame, np.ndarray):
            frame = PIL.Image.fromarray(
                (np.clip(frame, 0, 1) * 255).round().astype(np.uint8) if frame.dtype != np.uint8 else frame
            )
        frame.save(folder / frame_name(i))


def predict(
    model: str | Path | None,
    data: str | Path,
    out: str | Path,
    steps: int = 20,
    seed: int = 0,
    limit: int | None = None,
    references: bool = True,
) -> dict:
    """Generate every clip of `data` into <out>/model/<clip>/, and the trivial references into
    <out>/repeat_reference/<clip>/ and <out>/vae_reconstruction/<clip>/. Returns timings."""
    from frameprompt.loading import load_pipeline
    from frameprompt.research.train_vae import framewise, is_framewise
    from frameprompt.training.data import load_clip_pixels, load_dataset

    pipe = load_pipeline(model, device="cpu")
    pipe.set_progress_bar_config(disable=True)
    clips = load_dataset(data, *SequenceLayout.multiples_for(pipe.vae, pipe.transformer))[:limit]
    out = Path(out)
    seconds = []
    for clip in clips:
        reference = PIL.Image.open(clip.path / "reference.png").convert("RGB")
        from frameprompt.training.data import clip_skeleton_images

        poses = clip_skeleton_images(clip)
        t0 = time.time()
        result = pipe(
            reference,
            poses,
            height=clip.height,
            width=clip.width,
            num_inference_steps=steps,
            generator=torch.Generator().manual_seed(seed),
            output_type="pil",
        )
        seconds.append(time.time() - t0)
        _save_frames(result.frames[0], out / "model" / clip.name)
        if references:
            _save_frames([reference] * clip.num_frames, out / "repeat_reference" / clip.name)
            _, _, target = load_clip_pixels(clip)
            if not is_framewise(pipe.vae):
                raise ValueError("the VAE reconstruction reference needs the frame-wise codec")
            with torch.no_grad(), framewise(pipe.vae):
                # frames on the batch axis: the Wan encoder would drop frames beyond 1 + 4k
                b, c, f, h, w = target.shape
                frames = target.transpose(1, 2).reshape(b * f, c, 1, h, w)
                rec = pipe.vae.decode(pipe.vae.encode(frames).latent_dist.mode()).sample.clamp(-1, 1)
                rec = rec.reshape(b, f, c, 1, h, w)[:, :, :, 0].transpose(1, 2)
            rec = ((rec[0].permute(1, 2, 3, 0).numpy() + 1) * 127.5).round().astype(np.uint8)
            _save_frames(list(rec), out / "vae_reconstruction" / clip.name)
    info = {"clips": len(clips), "steps": steps, "seconds_per_clip": float(np.mean(seconds))}
    (out / "predict.json").write_text(json.dumps(info, indent=1))
    print(json.dumps(info))
    return info


MOTION_THRESHOLD = 25  # 0-255: a pixel "moves" where a target differs from the reference by more


def _psnr_in(prediction: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    """PSNR (dB, 0-255) over the pixels where `mask` (H, W) is true; inf-safe."""
    if not mask.any():
        return float("nan")
    mse = float(((prediction - truth) ** 2)[mask].mean())
    return 10 * np.log10(255.0**2 / max(mse, 1e-10))


def region_psnr(data: str | Path, pred: str | Path, radius: int = 5) -> dict:
    """PSNR (dB, 0-255) of `pred/<clip>/0000.png ...` against the held-out targets, in three regions:

    * moving: pixels where some ground-truth target differs from the reference image by more than
      MOTION_THRESHOLD in a channel (the union over the clip): what copying the reference gets wrong;
    * static: every other pixel (the background the model must keep);
    * character: each frame's skeleton drawing dilated by `radius` pixels.
    Mean over frames, then clips; clips missing under `pred` are skipped. `moving_fraction` is the
    mean share of a clip's pixels in the moving region.
    """
    import torch.nn.functional as F

    from frameprompt.training.data import clip_skeleton_images, load_dataset

    rows: dict[str, list[float]] = {"moving": [], "static": [], "character": [], "moving_fraction": []}
    for clip in load_dataset(data, *ANY_CLIP):
        files = sorted((Path(pred) / clip.name).glob("*.png"))
        if not files:
            continue
        skel = torch.from_numpy(np.stack([np.asarray(im) for im in clip_skeleton_images(clip)])).float()
        drawn = (skel.amax(-1) > 0).float()[:, None]
        character = F.max_pool2d(drawn, 2 * radius + 1, stride=1, padding=radius)[:, 0].bool().numpy()
        gt = np.stack([np.asarray(PIL.Image.open(f).convert("RGB")) for f in clip.target_files]).astype(
            np.float64
        )
        pr = np.stack([np.asarray(PIL.Image.open(f).convert("RGB")) for f in files]).astype(np.float64)
        ref = np.asarray(PIL.Image.open(clip.path / "reference.png").convert("RGB")).astype(np.float64)
        moving = (np.abs(gt - ref).max(-1) > MOTION_THRESHOLD).any(0)
        rows["moving_fraction"].append(float(moving.mean()))
        for name, masks in (
            ("moving", [moving] * len(gt)),
            ("static", [~moving] * len(gt)),
            ("character", character),
        ):
            rows[name].append(float(np.nanmean([_psnr_in(pr[i], gt[i], masks[i]) for i in range(len(gt))])))
    result: dict = {
        f"{k}_psnr" if k != "moving_fraction" else k: float(np.nanmean(v)) for k, v in rows.items()
    }
    result["min_moving_fraction"] = float(np.min(rows["moving_fraction"])) if rows["moving_fraction"] else 0.0
    result.update(clips=len(rows["moving"]), radius=radius, motion_threshold=MOTION_THRESHOLD)
    return result


def comparison_grid(
    data: str | Path, pred: str | Path, out: str | Path, clips: int = 4, scale: int = 2
) -> Path:
    """One PNG: per held-out clip, rows skeleton / ground truth / each folder under `pred` (model,
    references), with the reference image in the first column; `scale`x nearest-neighbour upscaling."""
    from frameprompt.training.data import clip_skeleton_images, load_dataset

    kinds = [
        k
        for k in (
            "model",
            "frameprompt",
            "frameprompt_all",
            "concat",
            "residual",
            "repeat_reference",
            "vae_reconstruction",
        )
        if (Path(pred) / k).is_dir()
    ]
    selected = load_dataset(data, *ANY_CLIP)[:clips]
    rows: list[list[PIL.Image.Image]] = []
    labels: list[str] = []
    for clip in selected:
        ref = PIL.Image.open(clip.path / "reference.png").convert("RGB")
        blank = PIL.Image.new("RGB", ref.size)
        rows.append([ref, *clip_skeleton_images(clip)])
        rows.append([blank, *(PIL.Image.open(f).convert("RGB") for f in clip.target_files)])
        labels += [f"{clip.name} skeleton", "ground truth"]
        for kind in kinds:
            files = sorted((Path(pred) / kind / clip.name).glob("*.png"))
            rows.append([blank, *(PIL.Image.open(f).convert("RGB") for f in files)])
            labels.append(kind)
    grid = contact_sheet(rows, scale)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out)
    out.with_suffix(".txt").write_text("\n".join(labels) + "\n")
    return out


def export(model: str | Path, dest: str | Path, info: dict | None = None) -> Path:
    """Copy a saved pipeline folder into `dest` (safetensors + configs only); checks the size."""
    model, dest = Path(model), Path(dest)
    files = [p for p in model.rglob("*") if p.is_file() and p.suffix in (".json", ".safetensors", ".txt")]
    total = sum(p.stat().st_size for p in files)
    if total > MAX_SHIPPED_BYTES:
        raise ValueError(f"{model} holds {total / 2**20:.1f} MB, more than the 50 MB budget")
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for p in files:
        target = tmp / p.relative_to(model)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(p, target)
    if info:
        (tmp / "frameprompt_default_model.json").write_text(json.dumps(info, indent=1))
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    print(f"exported {total / 2**20:.1f} MB to {dest}")
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m frameprompt.research.default_model")
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("init")
    p.add_argument("--vae", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("cache")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--cache", required=True)
    p = sub.add_parser("predict")
    p.add_argument("--model", help="default: the embedded default model")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int)
    p.add_argument("--no-references", action="store_true")
    p = sub.add_parser("region")
    p.add_argument("--data", required=True)
    p.add_argument(
        "--pred", required=True, help="<clip>/0000.png ... folders, or the predict --out folder (every kind)"
    )
    p.add_argument("--json", help="write the result here too")
    p = sub.add_parser("grid")
    p.add_argument("--data", required=True)
    p.add_argument("--pred", required=True, help="the predict --out folder")
    p.add_argument("--out", required=True, help="PNG file")
    p.add_argument("--clips", type=int, default=4)
    p = sub.add_parser("export")
    p.add_argument("--model", required=True)
    p.add_argument("--dest", required=True)
    p.add_argument("--info", help="JSON file with facts to store next to the weights")
    args = parser.parse_args(argv)
    if args.action == "init":
        init_model(args.vae, args.out, args.seed)
    elif args.action == "cache":
        build_cache(args.model, args.data, args.cache)
    elif args.action == "predict":
        predict(args.model, args.data, args.out, args.steps, args.seed, args.limit, not args.no_references)
    elif args.action == "region":
        folders = (
            [args.pred]
            if any(Path(args.pred).glob("*/0000.png"))
            else sorted(str(p) for p in Path(args.pred).iterdir() if p.is_dir() and any(p.glob("*/0000.png")))
        )
        result = {Path(f).name: region_psnr(args.data, f) for f in folders}
        print(json.dumps(result, indent=1))
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1))
    elif args.action == "grid":
        print(comparison_grid(args.data, args.pred, args.out, args.clips))
    else:
        info = json.loads(Path(args.info).read_text()) if args.info else None
        export(args.model, args.dest, info)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
