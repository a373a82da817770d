"""Video I/O: MP4, GIF and PNG-folder round trips with the real encoders, and clear errors."""

import os

import numpy as np
import pytest

from backend.io.video import (FRAME_RATE_FILE, VideoError, read_video, video_fps, video_info, write_frames_png,
                             write_video)


def _moving_disc(t=8, h=48, w=64):
    """Smooth gradients plus a moving disc: content a codec can keep close."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    frames = np.zeros((t, h, w, 3), np.float32)
    for i in range(t):
        frames[i, ..., 0] = xx / (w - 1)
        frames[i, ..., 1] = yy / (h - 1)
        frames[i, ..., 2] = ((xx - 10 - 5 * i) ** 2 + (yy - h / 2) ** 2 < 100).astype(np.float32)
    return frames


def test_png_folder_round_trip_is_exact(tmp_path):
    frames = (_moving_disc(t=12) * 255).round().astype(np.uint8)
    folder = tmp_path / "frames"
    paths = write_frames_png(frames, folder)
    assert [os.path.basename(p) for p in paths[:2]] == ["frame_0000.png", "frame_0001.png"]
    back, fps = read_video(folder)
    assert fps is None and back.dtype == np.float32 and back.shape == frames.shape
    np.testing.assert_array_equal((back * 255).round().astype(np.uint8), frames)

    # A shorter rerun replaces the sequence instead of leaving stale frames behind.
    write_frames_png(frames[:3], folder)
    assert read_video(folder)[0].shape[0] == 3


def test_folder_frames_sort_by_number(tmp_path):
    from PIL import Image

    for i in (1, 2, 10):  # plain sorting would give 1, 10, 2
        Image.fromarray(np.full((4, 4, 3), i, np.uint8)).save(tmp_path / f"f{i}.png")
    (tmp_path / "notes.txt").write_text("ignored")
    back, _ = read_video(tmp_path)
    np.testing.assert_array_equal((back[:, 0, 0, 0] * 255).round(), [1, 2, 10])


def test_mp4_round_trip(tmp_path):
    frames = _moving_disc()
    path = tmp_path / "clip.mp4"
    assert write_video(frames, path, fps=12) == os.fspath(path)
    back, fps = read_video(path)
    assert back.shape == frames.shape and fps == pytest.approx(12.0)
    assert np.abs(back - frames).mean() < 0.03  # lossy H.264 with 4:2:0 chroma
    assert os.listdir(tmp_path) == ["clip.mp4"]  # no temp file left behind


def test_mp4_odd_size_is_padded_to_even(tmp_path):
    frames = _moving_disc(t=3, h=47, w=63)
    path = tmp_path / "odd.mp4"
    write_video(frames, path, fps=24)
    back, _ = read_video(path)
    assert back.shape == (3, 48, 64, 3)
    assert np.abs(back[:, :47, :63] - frames).mean() < 0.03


def test_gif_round_trip(tmp_path):
    frames = _moving_disc()
    path = tmp_path / "clip.gif"
    write_video(frames, path, fps=10)
    back, fps = read_video(path)
    assert back.shape == frames.shape and fps == pytest.approx(10.0)
    assert np.abs(back - frames).mean() < 0.03  # 256-colour palette


def test_gif_keeps_repeated_frames(tmp_path):
    # GIF encoders merge identical neighbours into one longer frame; reading restores the count.
    frames = _moving_disc(t=4)
    frames = np.concatenate([frames[:2], frames[1:2], frames[1:2], frames[2:]])
    path = tmp_path / "hold.gif"
    write_video(frames, path, fps=10)
    back, _ = read_video(path)
    assert back.shape[0] == 6
    assert np.abs(back[2] - back[1]).max() == 0
    assert video_info(path) == (6, 48, 64)  # the count the reader gives


def test_info_matches_what_is_read(tmp_path):
    frames = _moving_disc(t=5)
    write_frames_png(frames, tmp_path / "folder")
    write_video(frames, tmp_path / "clip.mp4", fps=12)
    for clip in (tmp_path / "folder", tmp_path / "clip.mp4"):
        assert video_info(clip) == read_video(clip)[0].shape[:3], clip


def test_read_max_frames(tmp_path):
    path = tmp_path / "clip.mp4"
    write_video(_moving_disc(), path, fps=12)
    assert read_video(path, max_frames=3)[0].shape[0] == 3


def test_bad_inputs_raise_video_error(tmp_path):
    bad = tmp_path / "notes.mp4"
    bad.write_text("not a video")
    for path, fragment in [(bad, "cannot read"), (tmp_path / "missing.mp4", "no such"),
                           (tmp_path, "no frame images")]:
        with pytest.raises(VideoError) as info:
            read_video(path)
        assert os.fspath(path) in str(info.value) and fragment in str(info.value)

    broken = tmp_path / "broken.gif"
    broken.write_bytes(b"GIF89a" + bytes(5))
    with pytest.raises(VideoError, match="broken.gif"):
        read_video(broken)

    with pytest.raises(VideoError, match="shape"):
        write_video(np.zeros((2, 8, 8)), tmp_path / "x.mp4")
    with pytest.raises(VideoError, match="NaN"):
        write_video(np.full((2, 8, 8, 3), np.nan), tmp_path / "x.mp4")
    with pytest.raises(VideoError, match=".avi"):
        write_video(np.zeros((2, 8, 8, 3)), tmp_path / "x.avi")
    with pytest.raises(VideoError, match="fps"):
        write_video(np.zeros((2, 8, 8, 3)), tmp_path / "x.gif", fps=0)
    assert not (tmp_path / "x.mp4").exists()


def test_video_fps_reads_the_rate_each_clip_carries(tmp_path):
    frames = (np.random.default_rng(0).random((4, 16, 16, 3)) * 255).astype(np.uint8)
    assert video_fps(write_video(frames, tmp_path / "a.mp4", fps=30.0)) == pytest.approx(30.0)
    assert video_fps(write_video(frames, tmp_path / "a.gif", fps=50.0)) == pytest.approx(50.0)
    write_frames_png(frames, tmp_path / "tagged", fps=60.0)
    assert video_fps(tmp_path / "tagged") == 60.0
    assert read_video(tmp_path / "tagged")[0].shape[0] == 4  # the rate file is not a frame
    write_frames_png(frames, tmp_path / "bare")
    assert video_fps(tmp_path / "bare") is None  # bare frames say nothing; callers must not guess
    (tmp_path / "bare" / FRAME_RATE_FILE).write_text("{\"fps\": -1}")
    with pytest.raises(VideoError, match="frame rate"):
        video_fps(tmp_path / "bare")
