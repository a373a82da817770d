"""Frame boosting groups and the convergence rule."""
import math

import pytest
import torch

from backend.estimation.convergence import ConvergenceMonitor
from backend.estimation.supervision import Supervision
from backend.prior import PriorConfigError
from backend.prior.analytic import AnalyticPrior
from backend.prior.boosting import interleaved_groups


def test_interleaved_groups():
    assert interleaved_groups(15, 5) == [[0, 5, 10], [1, 6, 11], [2, 7, 12], [3, 8, 13], [4, 9, 14]]
    assert interleaved_groups(4, 1) == [[0, 1, 2, 3]]
    with pytest.raises(PriorConfigError, match="multiple of 4"):
        interleaved_groups(10, 4)
    with pytest.raises(PriorConfigError, match="fewer than 2"):
        interleaved_groups(5, 5)


def test_the_boosted_loss_is_the_mean_over_groups():
    g = torch.Generator().manual_seed(0)
    frames = torch.rand(6, 3, 4, 4, generator=g)
    target = torch.rand(3, 3, 4, 4, generator=g)
    prior = AnalyticPrior(target, loss_type="sds", t_range=(0.3, 0.3 + 1e-9))
    video = frames.clone().requires_grad_()
    boosted = Supervision([prior], n_render=6, groups=2, seed=1)  # the estimate's own grouped loss
    assert boosted.index == [[0, 2, 4], [1, 3, 5]]
    loss, info = boosted.loss(video, 0, 1)
    loss.backward()
    noise = torch.Generator().manual_seed(1)
    groups = [float(prior.loss(frames[idx], 0, 1, noise)[0]) for idx in boosted.index]
    assert math.isclose(float(loss.detach()), sum(groups) / 2, rel_tol=1e-6) and info["t"] == pytest.approx(0.3, abs=1e-3)
    # Each group's frames get that group's SDS score, halved by the mean: frames 0,2,4 and 1,3,5.
    ab = prior.noise_level(0.3).alpha_bar
    k = (1 - ab) * math.sqrt(ab / (1 - ab)) / 2
    assert torch.allclose(video.grad[0::2], k * (frames[0::2] - target), atol=1e-5)
    assert torch.allclose(video.grad[1::2], k * (frames[1::2] - target), atol=1e-5)


def test_convergence_within_one_decade():
    m = ConvergenceMonitor()
    assert not m.update({"E_median": 1e5, "E_p95": 1e6})
    assert not m.update({"E_median": 3e5, "E_p95": 2e6})
    assert m.update({"E_median": 5e5, "E_p95": 5e6}) and m.converged
    assert "converged at iteration 3" in m.reason


def test_no_convergence_while_values_swing():
    m = ConvergenceMonitor()
    seq = [1e4, 1e5, 1e6, 1e4, 1e6, 1e4]
    results = [m.update([v]) for v in seq]
    assert results == [False] * 6
    assert not m.converged and not m.stopped and "largest spread over the last 3 iterations 2.000" in m.reason


def test_window_uses_only_the_last_iterations_and_tolerance():
    m = ConvergenceMonitor(tolerance_decades=0.1)
    for v in (1e3, 1e6, 2e6, 2.1e6):
        stop = m.update({"E": v})
    assert not stop  # 1e6 .. 2.1e6 spans 0.32 decades
    assert m.update({"E": 2.2e6}) and m.converged  # 2e6 .. 2.2e6 spans 0.04 decades


def test_divergence():
    m = ConvergenceMonitor()
    assert m.update({"E": float("nan")}) and not m.converged and "diverged" in m.reason
