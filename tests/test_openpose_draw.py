"""The OpenPose drawing: golden comparison with an independent analytic rasteriser, scaling, depth order."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from frameprompt_blender.core.keypoints import KEYPOINT_COLORS, LIMB_COLORS, LIMBS, Pose
from frameprompt_blender.core.openpose_draw import draw_pose, save_pose_png, stick_width_for

# A standing person on a 512 x 512 canvas (pixels), all 18 points present.
STANDING = np.array(
    [[256, 100], [256, 160], [200, 160], [180, 240], [170, 320], [312, 160], [330, 240], [340, 320],
     [220, 300], [215, 400], [210, 490], [292, 300], [297, 400], [300, 490], [245, 90], [267, 90],
     [232, 95], [280, 95]], np.float32,
)  # fmt: skip


def standing(conf=None, depth=None, size=512) -> Pose:
    c = np.ones(18, np.float32) if conf is None else np.asarray(conf, np.float32)
    return Pose(np.column_stack([STANDING, c]), size, size, depth)


def reference_drawing(pose: Pose, w: int, h: int, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Independent re-drawing of the convention with per-pixel analytic tests (no Pillow, no polygons).

    Returns the image and a mask of pixels within 1.5 px of some shape boundary (where two rasterisers
    may legitimately disagree: whole-pixel vertices, inclusive edges)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.zeros((h, w, 3), np.float64)
    band = np.zeros((h, w), bool)
    xy = pose.keypoints[:, :2] * [w / pose.canvas_width, h / pose.canvas_height]
    ok = pose.keypoints[:, 2] > 0
    for i, (a, b) in enumerate(LIMBS):
        if not (ok[a] and ok[b]):
            continue
        (x0, y0), (x1, y1) = xy[a], xy[b]
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        ang = math.atan2(y1 - y0, x1 - x0)
        u = (xx - cx) * math.cos(ang) + (yy - cy) * math.sin(ang)
        v = -(xx - cx) * math.sin(ang) + (yy - cy) * math.cos(ang)
        half = math.hypot(x1 - x0, y1 - y0) / 2

        def inside(da, db, half=half, u=u, v=v):
            return (u / (half + da)) ** 2 + (v / (radius + db)) ** 2 <= 1

        img[inside(0, 0)] = LIMB_COLORS[i]
        band |= inside(1.5, 1.5) & ~inside(-1.5, -1.5)
    img = np.floor(img * 0.6)
    for j in range(18):
        if not ok[j]:
            continue
        d = np.hypot(xx - xy[j, 0], yy - xy[j, 1])
        img[d <= radius] = KEYPOINT_COLORS[j]
        band |= (d <= radius + 1.5) & (d > radius - 1.5)
    return img.astype(np.uint8), band


@pytest.mark.parametrize("size", [512, 200])
def test_golden_against_independent_redrawing(size):
    pose = standing()
    out = draw_pose(pose, size, size)
    assert out.shape == (size, size, 3) and out.dtype == np.uint8
    ref, band = reference_drawing(pose, size, size, stick_width_for(size, size))
    diff = np.any(out != ref, axis=2)
    assert not (diff & ~band).any(), f"{(diff & ~band).sum()} pixels differ away from shape edges"
    ours, theirs = out.max(axis=2) > 0, ref.max(axis=2) > 0
    if size >= 512:
        # Filled polygons include their boundary pixels (Pillow and cv2 alike): about 1 px more width than the
        # analytic ellipse, never less.
        assert 1.0 <= ours.sum() / theirs.sum() < 1.3, (ours.sum(), theirs.sum())
        assert (ours & theirs).sum() / (ours | theirs).sum() > 0.8
    # exact colours: black background, dimmed limbs, full-colour joints
    colours = {tuple(int(v) for v in c) for c in out.reshape(-1, 3)}
    assert (0, 0, 0) in colours
    assert {tuple(int(v * 0.6) for v in c) for c in LIMB_COLORS} <= colours
    assert set(KEYPOINT_COLORS) <= colours
    # a joint centre is full colour, the middle of a limb 0.6 x its colour
    j = (STANDING[2] * size / 512).round().astype(int)
    assert tuple(out[j[1], j[0]]) == KEYPOINT_COLORS[2]
    mid = ((STANDING[8] + STANDING[9]) / 2 * size / 512).astype(int)
    assert tuple(out[mid[1], mid[0]]) == tuple(int(v * 0.6) for v in LIMB_COLORS[7])


def _controlnet_aux_draw(pose: Pose, w: int, h: int, stickwidth: int) -> np.ndarray:
    """controlnet_aux `draw_bodypose`, line for line (cv2), for one person with all points present."""
    import cv2

    canvas = np.zeros((h, w, 3), np.uint8)
    xy = pose.keypoints[:, :2] / [pose.canvas_width, pose.canvas_height]
    for i in range(17):
        a, b = LIMBS[i]
        Y = np.array([xy[a, 0], xy[b, 0]]) * float(w)
        X = np.array([xy[a, 1], xy[b, 1]]) * float(h)
        mX, mY = np.mean(X), np.mean(Y)
        length = ((X[0] - X[1]) ** 2 + (Y[0] - Y[1]) ** 2) ** 0.5
        angle = math.degrees(math.atan2(X[0] - X[1], Y[0] - Y[1]))
        polygon = cv2.ellipse2Poly((int(mY), int(mX)), (int(length / 2), stickwidth), int(angle), 0, 360, 1)
        cv2.fillConvexPoly(canvas, polygon, LIMB_COLORS[i])
    canvas = (canvas * 0.6).astype(np.uint8)
    for i in range(18):
        x, y = xy[i] * [w, h]
        cv2.circle(canvas, (int(x), int(y)), stickwidth, KEYPOINT_COLORS[i], thickness=-1)
    return canvas


@pytest.mark.parametrize("size", [512, 256])
def test_matches_the_cv2_reference_drawer_when_cv2_is_available(size):
    """Only where OpenCV happens to be installed (it is not a dependency). Measured with
    opencv-python-headless 4.11: 99.65 % (512) / 99.31 % (256) of pixels identical."""
    pytest.importorskip("cv2")
    pose = standing()
    ours = draw_pose(pose, size, size)
    theirs = _controlnet_aux_draw(pose, size, size, int(stick_width_for(size, size)))
    assert np.all(ours == theirs, axis=2).mean() > 0.99
    a, b = ours.max(axis=2) > 0, theirs.max(axis=2) > 0
    assert (a & b).sum() / (a | b).sum() > 0.85


def test_stick_width_scales_and_matches_reference_at_512():
    assert stick_width_for(512, 512) == 4.0
    assert stick_width_for(1024, 768) == 6.0
    assert stick_width_for(64, 64) == 1.0


def test_two_resolutions_scale_consistently():
    pose = standing()
    small = draw_pose(pose, 256, 256).astype(np.float32)
    big = draw_pose(pose, 512, 512)
    down = np.asarray(Image.fromarray(big).resize((256, 256), Image.BOX), np.float32)
    m_small, m_down = small.max(axis=2) > 40, down.max(axis=2) > 40
    iou = (m_small & m_down).sum() / (m_small | m_down).sum()
    assert iou > 0.8, iou
    assert np.abs(small - down).mean() < 6.0
    # drawing at another size == drawing the rescaled pose
    np.testing.assert_array_equal(draw_pose(pose, 300, 200), draw_pose(pose.scaled(300, 200)))


def test_missing_keypoints_are_skipped():
    conf = np.ones(18)
    conf[4] = 0  # right wrist missing: limb 3 (elbow->wrist) and the joint disappear
    out = draw_pose(standing(conf))
    mid = ((STANDING[3] + STANDING[4]) / 2).astype(int)
    assert tuple(out[mid[1], mid[0]]) == (0, 0, 0)
    assert tuple(out[int(STANDING[4, 1]), int(STANDING[4, 0])]) == (0, 0, 0)
    assert not draw_pose(Pose.empty(32, 32)).any()
    # shoulder->ear pairs (limbs 17, 18 of the reference) are not drawn: the point between them stays black
    p = standing()
    q = (STANDING[2] * 0.5 + STANDING[16] * 0.5).astype(int)
    assert tuple(draw_pose(p)[q[1], q[0]]) == (0, 0, 0)


def _crossing_arms(r_depth: float, l_depth: float) -> Pose:
    """Right forearm (limb 3) and left forearm (limb 5) crossing at (256, 300)."""
    kp = np.column_stack([STANDING, np.ones(18)]).astype(np.float32)
    kp[3, :2], kp[4, :2] = (200, 250), (312, 350)  # right elbow -> wrist, down-right
    kp[6, :2], kp[7, :2] = (312, 250), (200, 350)  # left elbow -> wrist, down-left
    depth = np.full(18, 3.0, np.float32)
    depth[[3, 4]] = r_depth
    depth[[6, 7]] = l_depth
    return Pose(kp, 512, 512, depth)


def test_depth_order_puts_the_nearer_arm_on_top():
    right_dim = tuple(int(v * 0.6) for v in LIMB_COLORS[3])
    left_dim = tuple(int(v * 0.6) for v in LIMB_COLORS[5])
    near_right = _crossing_arms(r_depth=2.0, l_depth=4.0)
    assert tuple(draw_pose(near_right)[300, 256]) == right_dim
    assert tuple(draw_pose(_crossing_arms(r_depth=4.0, l_depth=2.0))[300, 256]) == left_dim
    # without depth (or with depth_order=False) the reference order applies: limb 5 after limb 3
    assert tuple(draw_pose(near_right, depth_order=False)[300, 256]) == left_dim
    flat = Pose(near_right.keypoints, 512, 512)
    assert tuple(draw_pose(flat)[300, 256]) == left_dim


def test_save_png(tmp_path):
    path = save_pose_png(tmp_path / "skeleton" / "0000.png", standing(), 128, 96)
    img = Image.open(path)
    assert img.mode == "RGB" and img.size == (128, 96)
    np.testing.assert_array_equal(np.asarray(img), draw_pose(standing(), 128, 96))
