"""A non-finite gradient from the MPM adjoint (injected through the simulator bridge's test hook) must not
end the run: the step moves to a nearby point, and after repeated failures the run still writes its best."""

import json

import numpy as np
import pytest

from backend import protocol
from backend.mpm.autograd import NONFINITE_GRAD_HOOK
from support import estimate_scenes as es

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def small_truth(tmp_path_factory):
    root = tmp_path_factory.mktemp("truth")
    scene = es.block_scene(es.E_STAR, n_side=4)
    sim, est = es.settings(frames=4, groups=2, ladder_rungs=0, iterations=7)
    es.make_truth(root, scene, sim, est)
    est["reference_video"] = str(root / "truth" / "out" / "preview_frames")
    return dict(scene, youngs_modulus=np.full(len(scene["positions"]), 2 * es.E_STAR, np.float32)), sim, est


def _run(folder, small_truth, hook, monkeypatch):
    scene, sim, est = small_truth
    monkeypatch.setenv(NONFINITE_GRAD_HOOK, hook)
    result = es.run_job(folder, "estimate", scene, sim, est)
    assert result.exit_code == protocol.ExitCode.OK, result.message
    summary = json.loads((folder / protocol.OUT_DIR / protocol.SUMMARY_FILE).read_text())
    E = es.estimated(folder)["youngs_modulus"]
    losses = [h["loss"] for h in summary["history"]]
    assert np.median(E) == pytest.approx(summary["best"]["E_p50"], rel=1e-5)  # the best point is written
    assert summary["best"]["loss"] == min(losses)
    return result, summary


def test_a_non_finite_gradient_moves_the_run_on(small_truth, tmp_path, monkeypatch):
    result, summary = _run(tmp_path, small_truth, "2,3", monkeypatch)
    h = summary["history"]
    assert len(h) == 7  # the run went on to its iteration limit
    assert [r["learned"] for r in h] == [True, False, False, True, True, True, True]
    assert "non-finite gradient" in h[1]["failure"]
    # never the same point again: each failed iteration is followed by a different point
    assert h[2]["E_p50"] != h[1]["E_p50"] and h[3]["E_p50"] != h[2]["E_p50"]
    assert any(e.kind == "warning" and "no usable gradient" in e.message for e in result.events)
    assert all(np.isfinite(r["loss"]) for r in h)


def test_repeated_failures_end_the_run_with_the_best_materials_and_a_warning(small_truth, tmp_path, monkeypatch):
    result, summary = _run(tmp_path, small_truth, "2-", monkeypatch)
    assert summary["iterations"] == 6  # one good iteration, then five failures in a row
    assert not summary["converged"] and "no usable gradient" in summary["stop_reason"]
    assert any(e.kind == "warning" and "stopped early" in e.message for e in result.events)
    assert (tmp_path / protocol.OUT_DIR / protocol.LOSS_PLOT_FILE).stat().st_size > 0


def test_a_longer_rerun_resumes_with_its_ladder_and_best(small_truth, tmp_path):
    """Raising the iteration limit resumes the run: no second ladder, and the best so far is still known."""
    scene, sim, est = small_truth
    est = dict(est, ladder_rungs=3, iterations=3)
    first = es.run_job(tmp_path, "estimate", scene, sim, est)
    assert first.ok, first.message
    assert [e.step for e in first.events if e.kind == "progress" and e.stage == "ladder"] == [1, 2, 3]
    before = json.loads((tmp_path / protocol.OUT_DIR / protocol.SUMMARY_FILE).read_text())
    again = es.run_job(tmp_path, "estimate", scene, sim, dict(est, iterations=5))
    assert again.ok, again.message
    assert not any(e.stage == "ladder" for e in again.events if e.kind == "progress")
    assert [e.step for e in again.events if e.kind == "progress" and e.stage == "estimate"] == [4, 5]
    after = json.loads((tmp_path / protocol.OUT_DIR / protocol.SUMMARY_FILE).read_text())
    assert after["ladder"] == before["ladder"] and after["history"][:3] == before["history"][:3]
    assert after["best"]["loss"] == min(h["loss"] for h in after["history"])
