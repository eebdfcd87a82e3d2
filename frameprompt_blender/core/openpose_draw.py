"""Draw a `Pose` as the OpenPose skeleton image the Wan pose models were trained on.

Pure module: numpy + Pillow. Why hand-written: the reference drawer (controlnet_aux
`open_pose/util.py::draw_bodypose`, copied by DWPose, UniAnimate-DiT, VideoX-Fun) needs OpenCV (cv2),
which Blender's Python does not ship and an extension cannot install; this is the same drawing with
Pillow's polygon/ellipse fill, so the add-on and the backend draw identical skeletons from one module.

The convention (see ../shared/notes/blender.md section 4.1):
1. black canvas;
2. the 17 limbs (LIMBS, not the two shoulder->ear pairs) as filled ellipses along the limb, with
   semi-axes (length / 2, stick width), colour LIMB_COLORS[i]; a limb with a missing end is skipped;
3. the whole canvas multiplied by 0.6 (limbs dimmed) *before* the joints are drawn;
4. the 18 joints as filled discs of full colour KEYPOINT_COLORS[j]; missing joints skipped.
The stick width and joint radius are 4 px at a 512 px short side (controlnet_aux's detect resolution)
and scale linearly with the canvas (never below 1 px), so the same pose at two resolutions looks the same.

Depth order (our addition): when the pose has depth, limbs are drawn far-to-near (by the mean depth of
their two ends) and joints likewise, so the nearer arm covers the farther one where they cross. Without
depth the order is the reference order.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .keypoints import KEYPOINT_COLORS, LIMB_COLORS, LIMBS, NUM_KEYPOINTS, Pose

REFERENCE_SIZE = 512  # short side at which stick width and joint radius are REFERENCE_STICK_WIDTH
REFERENCE_STICK_WIDTH = 4.0
LIMB_DIM = 0.6
ELLIPSE_STEP_DEG = 1  # cv2.ellipse2Poly(..., delta=1) in the reference


def stick_width_for(width: int, height: int) -> float:
    """Limb half-thickness (= joint radius) in pixels for a canvas size."""
    return max(1.0, REFERENCE_STICK_WIDTH * min(width, height) / REFERENCE_SIZE)


def ellipse_polygon(cx: float, cy: float, half_length: float, half_width: float, angle_deg: float,
                    step_deg: int = ELLIPSE_STEP_DEG) -> list[tuple[float, float]]:  # fmt: skip
    """Outline of a rotated ellipse, like cv2.ellipse2Poly (float centre, axes and angle in, whole pixels out)."""
    t = np.deg2rad(np.arange(0, 360, step_deg, dtype=np.float64))
    a = math.radians(angle_deg)
    ca, sa = math.cos(a), math.sin(a)
    x = cx + half_length * np.cos(t) * ca - half_width * np.sin(t) * sa
    y = cy + half_length * np.cos(t) * sa + half_width * np.sin(t) * ca
    # Rounded to whole pixels as ellipse2Poly does (Pillow would truncate floats, shifting shapes up-left).
    return list(zip(np.rint(x).astype(int).tolist(), np.rint(y).astype(int).tolist(), strict=True))


def draw_pose(
    pose: Pose,
    width: int | None = None,
    height: int | None = None,
    depth_order: bool = True,
    stick_width: float | None = None,
) -> np.ndarray:
    """Render `pose` to an (H, W, 3) uint8 RGB image, rescaled from its canvas to width x height
    (default: the pose's canvas size). See the module docstring for the convention."""
    w = int(width) if width is not None else pose.canvas_width
    h = int(height) if height is not None else pose.canvas_height
    if w <= 0 or h <= 0:
        raise ValueError(f"draw_pose: image size must be positive, got {w}x{h}")
    sx, sy = w / pose.canvas_width, h / pose.canvas_height
    xy = pose.keypoints[:, :2].astype(np.float64) * np.array([sx, sy])
    present = (pose.keypoints[:, 2] > 0) & np.all(np.isfinite(xy), axis=1)
    sw = stick_width_for(w, h) if stick_width is None else float(stick_width)

    use_depth = depth_order and pose.depth is not None and np.all(np.isfinite(pose.depth[present]))
    depth = pose.depth.astype(np.float64) if use_depth and pose.depth is not None else None

    limb_order = list(range(len(LIMBS)))
    joint_order = list(range(NUM_KEYPOINTS))
    if depth is not None:
        # far first; sorted() is stable, so equal depths keep the reference order
        limb_order = sorted(limb_order, key=lambda i: -(depth[LIMBS[i][0]] + depth[LIMBS[i][1]]) / 2)
        joint_order = sorted(joint_order, key=lambda j: -depth[j])

    img = Image.new("RGB", (w, h), (0, 0, 0))
    draw = ImageDraw.Draw(img)
    for i in limb_order:
        a, b = LIMBS[i]
        if not (present[a] and present[b]):
            continue
        (x0, y0), (x1, y1) = xy[a], xy[b]
        length = math.hypot(x1 - x0, y1 - y0)
        angle = math.degrees(math.atan2(y0 - y1, x0 - x1))
        poly = ellipse_polygon((x0 + x1) / 2, (y0 + y1) / 2, length / 2, sw, angle)
        draw.polygon(poly, fill=LIMB_COLORS[i])

    canvas = (np.asarray(img, dtype=np.float32) * LIMB_DIM).astype(np.uint8)
    img = Image.fromarray(canvas, "RGB")
    draw = ImageDraw.Draw(img)
    r = sw
    for j in joint_order:
        if not present[j]:
            continue
        x, y = xy[j]
        box = [round(x - r), round(y - r), round(x + r), round(y + r)]  # Pillow truncates floats
        draw.ellipse(box, fill=KEYPOINT_COLORS[j])
    return np.asarray(img, dtype=np.uint8).copy()


def save_pose_png(path: str | os.PathLike, pose: Pose, width: int | None = None, height: int | None = None,
                  depth_order: bool = True) -> Path:  # fmt: skip
    """Draw `pose` and write it as an RGB PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(draw_pose(pose, width, height, depth_order=depth_order), "RGB").save(path)
    return path
