"""Estimation's time apart from the timeline: a reference clip is compared at its own frame times.

A 24 fps scene fits a clip filmed at 60 fps: the clip's rate is read from the file (or given as
estimate.reference_fps), the simulation runs CFL substeps between the clip's frame times, and the
stiffness comes back. A clip that says nothing about its rate is refused, not assumed to be 24 fps.
"""

import json

import numpy as np
import pytest

from backend import protocol
from backend.io.video import FRAME_RATE_FILE, write_frames_png
from backend.estimation.sampling import estimation_sampling
from backend.estimation.supervision import check_inputs
from support import estimate_scenes as es

E_TRUE = 5.0e3
CLIP_FPS = 60.0
SCENE_FPS = 24.0


def test_the_clip_rate_comes_from_the_file_or_the_job_never_the_scene(tmp_path):
    bare = tmp_path / "bare"
    write_frames_png(np.zeros((16, 64, 64, 3), np.uint8), bare)  # no frame rate beside the frames
    sim, est = es.settings(fps=SCENE_FPS, reference_video=str(bare))
    with pytest.raises(protocol.BadJob, match="reference_fps"):
        check_inputs(est, tmp_path, 16)
    est["reference_fps"] = 30.0
    check_inputs(est, tmp_path, 16)
    assert estimation_sampling(est, sim, tmp_path).fps == 30.0

    tagged = tmp_path / "tagged"
    write_frames_png(np.zeros((16, 64, 64, 3), np.uint8), tagged, fps=CLIP_FPS)
    assert json.loads((tagged / FRAME_RATE_FILE).read_text()) == {"fps": CLIP_FPS}
    sim, est = es.settings(fps=SCENE_FPS, reference_video=str(tagged))
    sampling = estimation_sampling(est, sim, tmp_path)
    assert (sampling.fps, sampling.n_frames) == (CLIP_FPS, 16)
    # Diffusion priors: SVD's own conditioning rate (known before the model loads), else the scene's.
    sim, est = es.settings(fps=SCENE_FPS, prior="svd", model="any")
    assert estimation_sampling(est, sim, tmp_path).fps == protocol.PRIOR_FPS["svd"] == 7.0
    assert estimation_sampling(est, sim, tmp_path, prior_fps=10.0).fps == 10.0  # a model loaded with another rate
    assert estimation_sampling(dict(est, prior="modelscope"), sim, tmp_path).fps == SCENE_FPS


def test_the_projection_counts_the_substeps_of_the_sampled_motion():
    """The cost projected before a run (the add-on's panel, the backend's refusal) is that of the motion the
    estimate simulates: 15 frames of a 60 fps clip are 0.25 s, not the 0.625 s of 15 frames at 24 fps."""
    from backend.estimation import budget

    scene = {"fps": SCENE_FPS, "substep_dt": None, "n_frames": 100}
    clip = protocol.sampled_simulation(scene, protocol.sampling_fps("reference", SCENE_FPS, clip_fps=CLIP_FPS), 16)
    assert (clip["fps"], clip["n_frames"]) == (CLIP_FPS, 16)
    assert protocol.sampling_fps("svd", SCENE_FPS) == protocol.PRIOR_FPS["svd"]
    assert protocol.sampling_fps("modelscope", SCENE_FPS) == SCENE_FPS
    assert protocol.sampling_fps("reference", SCENE_FPS) == SCENE_FPS  # a clip whose rate is not read yet
    # a fixed substep never spans more than one sampled frame
    assert protocol.sampled_simulation({"fps": SCENE_FPS, "substep_dt": 0.02}, CLIP_FPS)["substep_dt"] == 1 / CLIP_FPS

    def simulated(fps):
        spf = budget.planned_substeps(3e6, 0.3, 400.0, 0.45, 24, fps)
        return budget.terms(3000, 128 * 72, 16, spf, 24)[2] / 3000  # substeps simulated per iteration

    assert simulated(CLIP_FPS) == pytest.approx(simulated(SCENE_FPS) * SCENE_FPS / CLIP_FPS, rel=0.02)


@pytest.mark.slow
def test_a_24_fps_scene_recovers_E_from_a_60_fps_clip(tmp_path):
    scene = es.block_scene(E_TRUE)
    # The clip: the true motion filmed at 60 fps (an MP4 whose stream says 60 fps).
    sim, est = es.settings(fps=CLIP_FPS)
    es.make_truth(tmp_path, scene, sim, est)
    clip = tmp_path / "truth" / "out" / protocol.PREVIEW_FILE
    # The artist's scene runs at 24 fps; the estimate starts a decade too soft (a decade too stiff sits on
    # the plateau where a stiff block barely moves: finding the basin from there is the log-E ladder's job).
    sim, est = es.settings(fps=SCENE_FPS, iterations=20, learning_rate=0.25, reference_video=str(clip))
    start = dict(scene, youngs_modulus=np.full(len(scene["positions"]), E_TRUE / 10, np.float32))
    result = es.run_job(tmp_path / "est", "estimate", start, sim, est)
    assert result.ok, result.message
    assert any("at 60 fps" in e.message for e in result.events if e.kind == "stage")
    E = float(np.median(es.estimated(tmp_path / "est")["youngs_modulus"]))
    print(json.dumps({"figure": "E from a 60 fps clip in a 24 fps scene", "E_true": E_TRUE, "E": E,
                      "error": E / E_TRUE - 1}))
    assert abs(E / E_TRUE - 1) < 0.25, E
