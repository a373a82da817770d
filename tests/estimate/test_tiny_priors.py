"""Full estimation runs with tiny SVD and ModelScope models, saved and loaded through the same
from_pretrained path as real weights; checkpoint/resume after a kill; errors before heavy work."""

import os
import signal
import sys
import time

import numpy as np
import pytest

from backend import protocol
from backend.protocol import ExitCode
from support import estimate_scenes as es
from support.addon_pkg import load

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    from support.tiny_models import save_tiny_modelscope, save_tiny_svd

    root = tmp_path_factory.mktemp("models")
    return {"svd": save_tiny_svd(str(root / "svd")) or str(root / "svd"),
            "modelscope": save_tiny_modelscope(str(root / "modelscope")) or str(root / "modelscope")}


def _job(kind, model, iterations=3):
    scene = es.block_scene(5e3, n_side=6)
    sim, est = es.settings(frames=4, groups=2, prior=kind, model=model, loss="mds", iterations=iterations,
                           cfg_scale=3.0, prompt="a jelly cube wobbling" if kind == "modelscope" else "")
    return scene, sim, est


@pytest.mark.parametrize("kind", ["svd", "modelscope"])
def test_full_run_through_the_real_pipeline(tiny_models, kind, tmp_path):
    scene, sim, est = _job(kind, tiny_models[kind])
    result = es.run_job(tmp_path, "estimate", scene, sim, est)
    assert result.ok, result.message
    steps = [e for e in result.events if e.kind == "progress" and e.stage == "estimate"]
    assert [e.step for e in steps] == [1, 2, 3]
    assert all(np.isfinite(e.loss) for e in steps)
    out = tmp_path / protocol.OUT_DIR
    E = es.estimated(tmp_path)["youngs_modulus"]
    assert np.all(np.isfinite(E)) and np.all(E > 0)
    summary = __import__("json").loads((out / protocol.SUMMARY_FILE).read_text())
    assert all(np.isfinite(h["score_rms"]) and h["score_rms"] > 0 for h in summary["history"])  # gradients flowed
    for name in (protocol.PREVIEW_FILE, protocol.LOSS_PLOT_FILE):
        assert (out / name).stat().st_size > 0


def test_killed_estimate_resumes_from_the_next_iteration(tiny_models, tmp_path):
    runner_mod = load("core.runner")
    scene, sim, est = _job("svd", tiny_models["svd"], iterations=4)
    protocol.write_job(tmp_path, protocol.default_job("estimate", simulation=sim, estimate=est), scene)
    runner = runner_mod.JobRunner(sys.executable, ["run", str(tmp_path)]).start()
    deadline = time.monotonic() + 600
    while not (runner.last_progress and runner.last_progress.stage == "estimate" and runner.last_progress.step >= 2):
        runner.tick()
        assert not runner.finished and time.monotonic() < deadline, runner.result
        time.sleep(0.05)
    os.kill(runner._proc.pid, signal.SIGKILL)
    assert runner.wait(60).state is runner_mod.RunState.FAILED
    again = runner_mod.JobRunner(sys.executable, ["run", str(tmp_path)]).start().wait(600)
    assert again.ok, again.message
    steps = [e.step for e in again.events if e.kind == "progress" and e.stage == "estimate"]
    assert steps[0] == 3 and steps[-1] == 4
    assert any(e.kind == "warning" and "Resuming from iteration 3" in e.message for e in again.events)


def _expect(tmp_path, code, fragment, scene, sim, est):
    result = es.run_job(tmp_path, "estimate", scene, sim, est)
    assert result.exit_code == code, result.message
    assert fragment in result.message
    assert not any(e.stage == "estimate" for e in result.events if e.kind == "progress")


def test_missing_model_folder_is_a_missing_resource(tmp_path):
    scene, sim, est = _job("svd", str(tmp_path / "no such model"))
    _expect(tmp_path / "job", ExitCode.MISSING_RESOURCE, "no such model", scene, sim, est)


def test_corrupt_model_folder_is_a_missing_resource(tiny_models, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_models["svd"], broken)
    for f in (broken / "unet").glob("*.safetensors"):
        f.write_bytes(b"not a safetensors file")
    scene, sim, est = _job("svd", str(broken))
    _expect(tmp_path / "job", ExitCode.MISSING_RESOURCE, "unet", scene, sim, est)


@pytest.mark.parametrize("frames, size, fragment", [(3, 64, "has 3 frames"), (16, 48, "aspect")])
def test_reference_video_that_does_not_fit(tmp_path, frames, size, fragment):
    from backend.io.video import write_frames_png

    ref = tmp_path / "ref"
    write_frames_png(np.zeros((frames, size, size * 2 if fragment == "aspect" else size, 3), np.uint8), ref)
    scene = es.block_scene(5e3, n_side=4)
    sim, est = es.settings(reference_video=str(ref))
    _expect(tmp_path / "job", ExitCode.BAD_INPUT, fragment, scene, sim, est)
