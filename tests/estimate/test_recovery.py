"""Recovery of a known stiffness through the whole pipeline (MPM -> renderer -> loss -> field).

A `preview` job renders the truth; an `estimate` job starts a decade off and must find it again.
These are the slowest tests of the suite (a minute or two each on 2 cores).
"""

import numpy as np
import pytest

from support import estimate_scenes as es

pytestmark = pytest.mark.slow
E_TRUE = 5.0e3


def _estimate(root, scene, start_E, sim, est):
    start = dict(scene, youngs_modulus=np.full(len(scene["positions"]), start_E, np.float32))
    result = es.run_job(root / "est", "estimate", start, sim, est)
    assert result.ok, result.message
    history = [e for e in result.events if e.kind == "progress" and e.stage == "estimate"]
    assert all(np.isfinite(e.loss) for e in history)
    return es.estimated(root / "est")["youngs_modulus"], history


@pytest.fixture(scope="module")
def truth_block(tmp_path_factory):
    root = tmp_path_factory.mktemp("block")
    scene = es.block_scene(E_TRUE)
    sim, est = es.settings()
    es.make_truth(root, scene, sim, est)
    return root, scene


@pytest.mark.parametrize("start", [E_TRUE * 10, E_TRUE / 10], ids=["from_10x", "from_tenth"])
def test_reference_fitting_recovers_global_E(truth_block, start, tmp_path):
    root, scene = truth_block
    sim, est = es.settings(iterations=24, reference_video=str(root / "truth" / "out" / "preview_frames"))
    E, history = _estimate(tmp_path, scene, start, sim, est)
    assert abs(np.median(E) / E_TRUE - 1) < 0.25, np.median(E)
    assert history[-1].loss < history[0].loss


@pytest.mark.parametrize("start", [E_TRUE * 10, E_TRUE / 10], ids=["from_10x", "from_tenth"])
def test_sds_with_an_analytic_prior_recovers_global_E(truth_block, start, tmp_path):
    """The analytic prior's data distribution is the single truth clip: SDS-T must lead back to E*."""
    root, scene = truth_block
    sim, est = es.settings(prior="analytic", loss="sds_t", iterations=24, reference_video=str(root / "truth" / "out" / "preview_frames"))
    E, _ = _estimate(tmp_path, scene, start, sim, est)
    assert abs(np.median(E) / E_TRUE - 1) < 0.25, np.median(E)


def test_reference_fitting_recovers_two_regions_with_the_kan_field(tmp_path):
    """A soft and a stiff tower (a decade apart) on one anchored base; the KAN triplane separates them."""
    soft, stiff = 2.0e3, 2.0e4
    scene = es.twin_towers(soft, stiff)
    sim, est = es.settings(field="kan_triplane", iterations=20, poke=es.TOWERS_POKE)
    es.make_truth(tmp_path, scene, sim, est)
    E, _ = _estimate(tmp_path, scene, np.sqrt(soft * stiff), sim, est)
    left = scene["positions"][:, 0] < 0
    assert abs(np.median(E[left]) / soft - 1) < 0.35, np.median(E[left])
    assert abs(np.median(E[~left]) / stiff - 1) < 0.35, np.median(E[~left])
