"""Keypoint schema, Pose, OpenPose JSON read/write, and the pure camera projection."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from frameprompt_blender.core import keypoints as K
from frameprompt_blender.core.keypoints import KEYPOINT_NAMES, LIMB_COLORS, LIMBS, Pose
from frameprompt_blender.core.openpose_json import (
    pose_from_openpose_dict,
    pose_to_openpose_dict,
    read_pose_folder,
    read_pose_json,
    write_clip_json,
    write_pose_json,
)
from frameprompt_blender.core.projection import CameraParams, project_points


def sample_pose(w=512, h=384, depth=True, seed=0) -> Pose:
    rng = np.random.default_rng(seed)
    kp = np.column_stack([rng.uniform(0, w, 18), rng.uniform(0, h, 18), np.ones(18)]).astype(np.float32)
    kp[16, 2] = 0.0
    d = rng.uniform(2.0, 5.0, 18).astype(np.float32) if depth else None
    return Pose(kp, w, h, d)


def test_schema_tables():
    assert len(KEYPOINT_NAMES) == 18 and KEYPOINT_NAMES[1] == "Neck" and KEYPOINT_NAMES[17] == "LEar"
    assert len(LIMBS) == 17 and len(LIMB_COLORS) == 17 and len(K.KEYPOINT_COLORS) == 18
    # controlnet_aux limbSeq (1-based) for the 17 drawn limbs
    ref = [[2, 3], [2, 6], [3, 4], [4, 5], [6, 7], [7, 8], [2, 9], [9, 10], [10, 11], [2, 12], [12, 13],
           [13, 14], [2, 1], [1, 15], [15, 17], [1, 16], [16, 18]]  # fmt: skip
    assert [[a + 1, b + 1] for a, b in LIMBS] == ref
    assert (
        LIMB_COLORS[0] == (255, 0, 0)
        and LIMB_COLORS[12] == (0, 0, 255)
        and K.KEYPOINT_COLORS[17] == (255, 0, 85)
    )
    assert (
        K.keypoint_index("right_shoulder")
        == K.keypoint_index("RShoulder")
        == K.keypoint_index("r_shoulder")
        == 2
    )
    assert K.keypoint_index("17") == 17
    with pytest.raises(ValueError, match="unknown keypoint"):
        K.keypoint_index("tail")


def test_pose_basics():
    p = Pose.empty(64, 32)
    assert p.keypoints.shape == (18, 3) and not p.visible.any() and p.depth is None
    q = sample_pose()
    s = q.scaled(256, 768)
    np.testing.assert_allclose(s.xy[:, 0], q.xy[:, 0] / 2, rtol=1e-6)
    np.testing.assert_allclose(s.xy[:, 1], q.xy[:, 1] * 2, rtol=1e-6)
    np.testing.assert_array_equal(s.depth, q.depth)
    np.testing.assert_allclose(s.normalized(), q.normalized(), rtol=1e-5)
    with pytest.raises(ValueError, match=r"\(18, 3\)"):
        Pose(np.zeros((17, 3)), 10, 10)
    with pytest.raises(ValueError, match="depth"):
        Pose(np.zeros((18, 3)), 10, 10, np.zeros(5))


def test_json_round_trip_is_exact(tmp_path):
    p = sample_pose()
    path = write_pose_json(tmp_path / "0000_keypoints.json", p)
    d = json.loads(path.read_text())
    assert d["version"] == 1.3 and d["canvas_width"] == 512 and d["canvas_height"] == 384
    assert len(d["people"]) == 1 and len(d["people"][0]["pose_keypoints_2d"]) == 54
    [back] = read_pose_json(path)
    assert back == p
    no_depth = sample_pose(depth=False)
    assert pose_from_openpose_dict(pose_to_openpose_dict(no_depth)) == no_depth


def test_clip_and_folder(tmp_path):
    poses = [sample_pose(seed=i) for i in range(5)]
    write_clip_json(tmp_path / "clip.json", poses)
    assert read_pose_json(tmp_path / "clip.json") == poses
    folder = tmp_path / "pose"
    for i in reversed(range(5)):
        write_pose_json(folder / f"{i:04d}_keypoints.json", poses[i])
    (folder / "notes.txt").write_text("ignored")
    assert read_pose_folder(folder) == poses
    # the {"frames": [...]} wrapper is accepted too
    (tmp_path / "wrapped.json").write_text(json.dumps({"frames": [pose_to_openpose_dict(p) for p in poses]}))
    assert read_pose_json(tmp_path / "wrapped.json") == poses


def test_reading_other_tools_output(tmp_path):
    # OpenPose BODY_25 (MidHip at 8, feet at 19-24) becomes COCO-18
    body25 = np.arange(75, dtype=np.float32).reshape(25, 3) + 1
    d = {"version": 1.3, "people": [{"pose_keypoints_2d": body25.reshape(-1).tolist()}]}
    p = pose_from_openpose_dict(d, canvas_size=(640, 480))
    np.testing.assert_array_equal(p.keypoints[8], body25[9])
    np.testing.assert_array_equal(p.keypoints[17], body25[18])
    # normalised coordinates are scaled to the canvas; no people = empty pose
    norm = np.tile([0.5, 0.25, 1.0], 18)
    p = pose_from_openpose_dict(
        {"people": [{"pose_keypoints_2d": norm.tolist()}], "canvas_width": 200, "canvas_height": 100}
    )
    assert p.keypoints[0, 0] == pytest.approx(100) and p.keypoints[0, 1] == pytest.approx(25)
    assert not pose_from_openpose_dict({"people": [], "canvas_width": 8, "canvas_height": 8}).visible.any()


@pytest.mark.parametrize(
    "doc, message",
    [
        (
            {"people": [{"pose_keypoints_2d": [0.0] * 51}], "canvas_width": 8, "canvas_height": 8},
            "17 keypoints",
        ),
        ({"people": [{"pose_keypoints_2d": [0.0] * 53}], "canvas_width": 8, "canvas_height": 8}, "triples"),
        ({"people": [{"pose_keypoints_2d": [0.0] * 54}]}, "canvas_width"),
        ({"canvas_width": 8, "canvas_height": 8}, "people"),
        ({"people": [{}], "canvas_width": 8, "canvas_height": 8}, "pose_keypoints_2d"),
    ],
)
def test_bad_files_name_the_file_and_the_fix(tmp_path, doc, message):
    path = tmp_path / "0007_keypoints.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=message) as err:
        read_pose_json(path)
    assert "0007_keypoints.json" in str(err.value)


def test_bad_folder_and_json(tmp_path):
    with pytest.raises(ValueError, match="no \\*_keypoints.json"):
        read_pose_folder(tmp_path)
    (tmp_path / "0000_keypoints.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_pose_folder(tmp_path)


# -- projection (pure) ---------------------------------------------------------------------------------


def _look_along_y(location):
    """Camera matrix: rotation (90 deg, 0, 0) -> looks along +Y, up +Z, at `location`."""
    m = np.eye(4)
    m[:3, :3] = [[1, 0, 0], [0, 0, -1], [0, 1, 0]]
    m[:3, 3] = location
    return m


def test_projection_perspective_analytic():
    cam = CameraParams(
        _look_along_y((0, -10, 1)), lens=50, sensor_width=36, resolution_x=200, resolution_y=100
    )
    pts = np.array([[0, 0, 1], [1, 0, 1.5], [-2, 5, 0], [0, -20, 1]], float)
    pr = project_points(cam, pts)
    half = 18 / 50  # horizontal fit: half-width of the frame at distance 1
    for p, px, d, front in zip(pts, pr.pixels, pr.depth, pr.in_front, strict=True):
        dist = p[1] + 10
        assert d == pytest.approx(dist)
        if dist > 0:
            assert front
            assert px[0] == pytest.approx((p[0] / dist / half * 0.5 + 0.5) * 200, abs=1e-6)
            assert px[1] == pytest.approx((0.5 - (p[2] - 1) / dist / (half * 0.5) * 0.5) * 100, abs=1e-6)
    assert not pr.in_front[3]


def test_projection_ortho_shift_fit_percentage_aspect():
    ortho = CameraParams(
        _look_along_y((0, -10, 1)), type="ORTHO", ortho_scale=4.0, resolution_x=100, resolution_y=200
    )
    pr = project_points(ortho, np.array([[1.0, 3.0, 2.0]]))
    # portrait + AUTO fit -> vertical: the 4 m span the 200 px height
    assert pr.pixels[0, 0] == pytest.approx(50 + 1.0 / 4 * 200)
    assert pr.pixels[0, 1] == pytest.approx(100 - 1.0 / 4 * 200)
    cam = CameraParams(_look_along_y((0, -10, 1)), lens=50, shift_x=0.1, shift_y=-0.05, resolution_x=400,
                       resolution_y=200, resolution_percentage=50)  # fmt: skip
    assert cam.render_size == (200, 100)
    pr = project_points(cam, np.array([[0.0, 0.0, 1.0]]))
    # a shift of 0.1 moves the frame 0.1 x its width: the centre point moves left by 20 px
    assert pr.pixels[0] == pytest.approx([100 - 20, 50 - 10])
    wide = CameraParams(_look_along_y((0, -10, 1)), resolution_x=100, resolution_y=100, pixel_aspect_x=2.0)
    sq = CameraParams(_look_along_y((0, -10, 1)), resolution_x=200, resolution_y=100)
    p = np.array([[0.7, 2.0, 1.3]])
    # 100x100 pixels twice as wide == the 200x100 square-pixel frame, halved in x
    a, b = project_points(wide, p).pixels[0], project_points(sq, p).pixels[0]
    assert a == pytest.approx([b[0] / 2, b[1]])
    assert math.isclose(project_points(sq, p).depth[0], 12.0)
