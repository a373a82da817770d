"""Reference videos: loading (MP4, frame folders), fit checks, SSIM loss, SVD generation with a cache."""
import math
import os

import numpy as np
import pytest
import torch

from backend.prior import PriorConfigError, ReferenceVideoError
from backend.io.video import write_frames_png
from backend.prior.reference_clip import (ReferenceVideoLoss, generate_reference, load_video, reference_loss, ssim,
                                          video_info)

from .conftest import smooth_video


@pytest.fixture
def frame_folder(tmp_path):
    video = smooth_video(5, 64)
    write_frames_png(video.permute(0, 2, 3, 1).numpy(), tmp_path / "frames")
    return str(tmp_path / "frames"), video


def write_mp4(path, frames_uint8, fps=10):
    import imageio_ffmpeg

    h, w = frames_uint8.shape[1:3]
    writer = imageio_ffmpeg.write_frames(path, (w, h), fps=fps, macro_block_size=1, ffmpeg_log_level="error")
    writer.send(None)
    for f in frames_uint8:
        writer.send(np.ascontiguousarray(f))
    writer.close()


def test_frame_folder_round_trip(frame_folder):
    path, video = frame_folder
    assert video_info(path) == (5, 64, 64)
    loaded = load_video(path, n_frames=4, size=(64, 64))
    assert loaded.shape == (4, 3, 64, 64)
    assert (loaded - video[:4]).abs().max() <= 0.5 / 255 + 1e-6


def test_mp4_loads_and_resizes_same_aspect(tmp_path):
    frames = (smooth_video(6, 64).permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8)
    path = str(tmp_path / "ref.mp4")
    write_mp4(path, frames)
    assert video_info(path) == (6, 64, 64)
    video = load_video(path, n_frames=6, size=(32, 32))
    assert video.shape == (6, 3, 32, 32)
    assert float(video.min()) >= 0 and float(video.max()) <= 1
    # Lossy codec: close to the source, downsampled.
    src = torch.nn.functional.interpolate(torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255, size=(32, 32),
                                          mode="bilinear", antialias=True)
    assert float((video - src).abs().mean()) < 0.05


def test_misfit_references_fail_before_decoding(frame_folder, tmp_path, monkeypatch):
    path, _ = frame_folder
    # Decoding a frame would be the heavy part: make it fail loudly if reached.
    monkeypatch.setattr(np, "stack", lambda *a, **k: pytest.fail("frames were decoded"))
    with pytest.raises(ReferenceVideoError, match="has 5 frames but the job renders 8"):
        load_video(path, n_frames=8, size=(64, 64))
    with pytest.raises(ReferenceVideoError, match="aspect"):
        load_video(path, n_frames=4, size=(64, 128))
    with pytest.raises(ReferenceVideoError, match="has 5 frames, the job renders 4"):
        load_video(path, n_frames=4, size=(64, 64), allow_trim=False)
    with pytest.raises(ReferenceVideoError, match="does not exist"):
        load_video(str(tmp_path / "missing.mp4"), n_frames=4)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ReferenceVideoError, match="no frame images"):
        load_video(str(empty))
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ReferenceVideoError, match="neither a video file"):
        load_video(str(tmp_path / "notes.txt"))


def test_ssim_and_loss():
    a = smooth_video(3, 32)
    assert torch.allclose(ssim(a, a), torch.ones(3), atol=1e-5)
    b = (a + 0.1 * torch.randn(a.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    s = ssim(a, b)
    assert (s < 0.99).all() and (s > 0).all()
    loss, info = reference_loss(b, a)
    mse = (a - b).square().flatten(1).mean(1)
    assert math.isclose(float(loss), float((0.05 * mse + 0.9 * (1 - s)).mean()), rel_tol=1e-5)
    # Gradient against a central finite difference on one pixel.
    x = b.double().requires_grad_()
    reference_loss(x, a.double())[0].backward()
    h = 1e-6
    e = torch.zeros_like(x)
    e[1, 2, 10, 11] = h
    fd = (reference_loss(x.detach() + e, a.double())[0] - reference_loss(x.detach() - e, a.double())[0]) / (2 * h)
    assert abs(float(x.grad[1, 2, 10, 11]) - float(fd)) < 1e-6


def test_reference_loss_object_checks_shape():
    ref = smooth_video(4, 32)
    obj = ReferenceVideoLoss(ref)
    loss, info = obj.loss(ref.clone().requires_grad_())
    assert float(loss.detach()) < 1e-5 and info["loss_type"] == "reference"
    with pytest.raises(PriorConfigError, match="does not match the reference"):
        obj.loss(ref[:3])


def test_generate_reference_with_the_svd_pipeline_and_cache(svd_prior, tmp_path, monkeypatch):
    cond = smooth_video(1, 64)[0]
    cache = str(tmp_path / "ref")
    video = generate_reference(svd_prior, cond, num_frames=4, cache_dir=cache, num_inference_steps=2, seed=3)
    assert video.shape == (4, 3, 64, 64) and torch.isfinite(video).all()
    assert os.path.isfile(os.path.join(cache, "meta.json")) and len(os.listdir(cache)) == 5
    import diffusers

    monkeypatch.setattr(diffusers.StableVideoDiffusionPipeline, "__call__",
                        lambda *a, **k: pytest.fail("the cache was not used"))
    again = generate_reference(svd_prior, cond, num_frames=4, cache_dir=cache, num_inference_steps=2, seed=3)
    assert torch.equal(video, again)
