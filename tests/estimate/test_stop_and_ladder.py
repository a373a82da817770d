"""The stop rule and the ladder against known trajectories and known loss landscapes (no simulation)."""

import math
import re

import numpy as np
import pytest

from backend import protocol
from backend.estimation import ladder
from backend.estimation.convergence import DecadeRule, PlateauMonitor, make_stop_rule


def _feed(rule, E, loss=None):
    """Index (1-based) of the iteration where the rule stops, or None."""
    loss = loss if loss is not None else [abs(math.log(e / E[-1])) + 1e-3 for e in E]
    for i, (e, l) in enumerate(zip(E, loss)):
        if rule.update(l, {"ln E": math.log(e)}):
            return i + 1
    return None


def test_plateau_does_not_stop_at_a_turning_point_of_an_oscillation():
    # Adam swinging through the minimum at 1.0: each turning point has a small 3-iteration spread.
    t = np.arange(50)
    E = 1.0 + 0.3 * np.exp(-t / 8.0) * np.cos(2 * np.pi * t / 9.0)
    stop = _feed(PlateauMonitor(), E)
    assert stop is not None and abs(E[stop - 1] - 1.0) < 0.02, stop
    # the paper's rule (one decade, 3 iterations) stops at the first chance, 30 % off
    assert _feed(DecadeRule(1.0, 3), E) == 3


def test_plateau_waits_while_E_still_moves_slowly():
    E = np.geomspace(1e4, 2e4, 30)  # 2.4 % per iteration, monotone: not arrived
    assert _feed(PlateauMonitor(), E) is None


def test_plateau_stops_on_a_still_trajectory_after_the_minimum_iterations():
    E = np.full(20, 5e3) * (1 + 1e-4 * np.random.default_rng(0).standard_normal(20))
    loss = 1e-3 + 0.1 ** np.arange(20)  # fell fast, then flat
    rule = PlateauMonitor(window=6, tolerance=0.02, min_iterations=10)
    assert _feed(rule, E, loss) == 10 and "arrived at iteration 10" in rule.reason


def test_plateau_waits_while_the_loss_still_falls():
    E = np.full(20, 5e3)
    loss = list(np.linspace(1.0, 0.0, 20))  # E is still but the loss keeps falling steadily
    assert _feed(PlateauMonitor(), E, loss) is None


def test_job_defaults_choose_the_plateau_rule_and_the_decade_rule_on_request():
    est = dict(protocol.ESTIMATE_DEFAULTS)
    assert isinstance(make_stop_rule(est), PlateauMonitor)
    assert isinstance(make_stop_rule(dict(est, stop_rule="decade")), DecadeRule)


def test_rungs_span_the_range_inside_its_edges_half_a_decade_apart():
    r = ladder.rungs((1e3, 1e8), None)
    assert r[0] == pytest.approx(1e3 * ladder.EDGE) and r[-1] == pytest.approx(1e8 / ladder.EDGE)
    assert np.allclose(np.diff(np.log10(r)), np.diff(np.log10(r))[0])
    assert 0.4 < np.diff(np.log10(r))[0] <= 0.5
    assert len(ladder.rungs((1e3, 1e8), 4)) == 4


def test_a_ladder_run_side_by_side_tries_and_reports_what_one_after_another_does():
    """A pass's rungs are independent: on a thread pool (as the estimate runs them on a CPU with cores to
    spare) the tries, their order, the progress reports and the choice are those of the serial ladder."""
    from concurrent.futures import ThreadPoolExecutor

    truth = np.array([2e3] * 5 + [2e4] * 5)
    labels = np.array([0] * 5 + [1] * 5)

    def loss_of(E):
        return float(np.sum((np.log10(E) - np.log10(truth)) ** 2))

    values = np.geomspace(1e2, 1e6, 17)
    reports = {"serial": [], "pool": []}
    serial = ladder.climb(loss_of, np.full(10, 6e3), labels, values, lambda *a: reports["serial"].append(a))
    with ThreadPoolExecutor(3) as pool:
        side = ladder.climb(loss_of, np.full(10, 6e3), labels, values, lambda *a: reports["pool"].append(a),
                            mapper=pool.map)
    assert side.tries == serial.tries and side.start == serial.start and np.array_equal(side.E, serial.E)
    steps = [r[0] for r in reports["pool"]]
    assert reports["pool"] == reports["serial"] and steps == sorted(steps)
    assert any(t.get("reused") for t in side.tries)  # the whole object's try, recorded in its place, not run again


def test_ladder_finds_the_global_minimum_of_a_non_convex_loss():
    # loss along log10 E: the true minimum at 10^4, a bump at 5x, and a lower shoulder beyond it
    def loss_of(E):
        x = np.log10(E[0]) - 4.0
        return x ** 2 if x < 0.7 else max(0.49 - 0.2 * (x - 0.7), 0.2)

    values = ladder.rungs((1e2, 1e7), None)
    labels = np.zeros(10, np.int64)
    result = ladder.climb(loss_of, np.full(10, 9e4), labels, values)
    assert abs(np.log10(result.start[0]) - 4.0) <= 0.25
    assert len(result.tries) == len(values) and result.regions == 1


def test_ladder_chooses_each_region_with_the_others_held():
    truth = np.array([2e3] * 5 + [2e4] * 5)
    labels = np.array([0] * 5 + [1] * 5)

    def loss_of(E):
        return float(np.sum((np.log10(E) - np.log10(truth)) ** 2))

    values = np.geomspace(1e2, 1e6, 17)  # quarter decades: both truths sit between rungs or on them
    result = ladder.climb(loss_of, np.full(10, 6e3), labels, values)
    assert result.regions == 2 and len(result.start) == 2
    assert abs(np.log10(result.start[0] / 2e3)) <= 0.125 and abs(np.log10(result.start[1] / 2e4)) <= 0.125
    assert np.allclose(result.E[:5], result.start[0]) and np.allclose(result.E[5:], result.start[1])
    assert {t["pass"] for t in result.tries} == {"all", "region 0", "region 1"}
    whole = min((t for t in result.tries if t["pass"] == "all"), key=lambda t: t["loss"])["E"]
    near = np.abs(np.log10(values / whole)) <= ladder.REGION_SPAN_DECADES + 1e-9
    assert 3 <= near.sum() < len(values)  # a region pass covers a decade either side of the whole object's best
    assert [t["E"] for t in result.tries if t["pass"] == "region 0"] == pytest.approx(values[near])


def test_ladder_keeps_locked_points_and_survives_failed_rungs():
    labels = np.array([-1, 0, 0, 0])
    E0 = np.array([7.0, 1.0, 1.0, 1.0])

    def loss_of(E):
        assert E[0] == 7.0  # a locked point is never changed
        return float("inf") if E[1] > 1e4 else (np.log10(E[1]) - 3) ** 2

    result = ladder.climb(loss_of, E0, labels, np.geomspace(1e2, 1e6, 9))
    assert result.E[0] == 7.0 and result.start == [pytest.approx(1e3)]
    assert any(t["loss"] is None for t in result.tries)
    every_rung_fails = ladder.climb(lambda E: float("inf"), E0, labels, np.geomspace(1e2, 1e6, 3))
    assert np.array_equal(every_rung_fails.E, E0) and every_rung_fails.start == []


def test_spatial_regions_split_two_separate_towers():
    rng = np.random.default_rng(1)
    pts = np.concatenate([rng.random((50, 3)) * 0.1 - [0.2, 0, 0], rng.random((50, 3)) * 0.1 + [0.1, 0, 0]])
    free = np.ones(100, bool)
    free[0] = False
    labels = ladder.spatial_regions(pts, 2, free)
    assert labels[0] == -1
    assert len(set(labels[1:50])) == 1 and len(set(labels[50:])) == 1 and labels[1] != labels[50]
    assert set(ladder.spatial_regions(pts, 1, free)[1:]) == {0}


def test_spatial_regions_leave_held_points_out_and_let_them_follow_the_nearest_moving_part():
    """A long anchored pot under two short towers: k-means on every point spends its regions on the pot's
    two ends and puts both towers in one; with the pot held, the regions split the towers, and each pot
    point takes the label of its nearest tower point."""
    rng = np.random.default_rng(2)
    pot = rng.random((400, 3)) * [0.4, 1.2, 0.1] - [0.2, 0.6, 0.1]
    towers = np.concatenate([rng.random((40, 3)) * [0.02, 0.02, 0.3] + [-0.15, 0.01, 0],
                             rng.random((40, 3)) * [0.02, 0.02, 0.3] + [0.13, 0.01, 0]])
    pts = np.concatenate([pot, towers])
    held = np.arange(len(pts)) < len(pot)
    labels = ladder.spatial_regions(pts, 2, np.ones(len(pts), bool), held=held)
    left, right = labels[400:440], labels[440:]
    assert len(set(left)) == 1 and len(set(right)) == 1 and left[0] != right[0]
    assert (labels[:400][pot[:, 0] < -0.05] == left[0]).all() and (labels[:400][pot[:, 0] > 0.05] == right[0]).all()
    everything = ladder.spatial_regions(pts, 2, np.ones(len(pts), bool))
    assert len(set(everything[400:])) == 1  # what happened before: one region for both towers


@pytest.mark.parametrize("key, value, fragment", [
    ("stop_rule", "sometime", "estimate.stop_rule must be one of plateau, decade"),
    ("stop_window", 2, "estimate.stop_window = 2 is outside"),
    ("stop_tolerance", 0, "estimate.stop_tolerance = 0 is outside"),
    ("ladder_rungs", 1, "ladder_rungs = 1 must be 0 (off), null (automatic) or at least 2"),
    ("ladder_regions", 0, "estimate.ladder_regions = 0 is outside"),
    ("learn_nu", "yes", "estimate.learn_nu must be true or false"),
])
def test_bad_stop_ladder_and_learn_settings_are_refused(tmp_path, key, value, fragment):
    from support import estimate_scenes as es

    (tmp_path / "ref").mkdir()
    sim, est = es.settings(reference_video="ref", **{key: value})
    protocol.write_job(tmp_path, protocol.default_job("estimate", simulation=sim, estimate=est),
                       es.block_scene(1e4, n_side=2))
    with pytest.raises(protocol.BadJob, match=re.escape(fragment)):
        protocol.read_job(tmp_path)
    protocol.write_job(tmp_path, protocol.default_job("estimate", simulation=sim, estimate=dict(est, **{
        key: protocol.ESTIMATE_DEFAULTS[key]})), es.block_scene(1e4, n_side=2))
    assert protocol.read_job(tmp_path).estimate[key] == protocol.ESTIMATE_DEFAULTS[key]
