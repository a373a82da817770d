"""The ``estimate`` job: learn per-particle materials by differentiating video supervision through MPM.

One iteration:  material field -> (E, nu, rho) per particle -> differentiable MPM over M*T frames ->
splats rendered along the camera -> frame-boosted groups -> video loss (MDS / SDS-T from a diffusion
prior, or L2+SSIM against a reference clip) -> backward into the field -> Adam step.

Before the first iteration a coarse ladder of log E values (forward only) picks the start, region by
region (backend/estimation/ladder.py). Every iteration emits a progress event and saves a checkpoint, so a cancelled
or killed run resumes where it stopped; the stop rule (backend/estimation/convergence.py) ends the loop when the
smoothed loss and E stopped moving. The lowest-loss point evaluated is what gets written, and a
non-finite gradient or a failed simulation moves the run to a nearby point instead of ending it.
"""

from __future__ import annotations

import gc
import queue
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import protocol
from ..estimation.budget import FULL_TAPE_MB, GRID_STORE_MB
from ..estimation.convergence import make_stop_rule
from .device import ladder_workers, set_estimate_threads, warp_device
from ..jobctl import CancelToken, Reporter, log
from .scene import SceneParticles, build_particles, held_still_text
from ..estimation.sampling import estimation_sampling, sampling_simulation
from .simulate import rest_state, sim_config
from ..io.sh import dc_to_rgb
from ..io.statefile import StateRejected, load_state, save_state
from ..estimation.supervision import Supervision, check_inputs, first_frame, make_supervision

# FULL_TAPE_MB (imported above): below this much tape memory the simulation keeps its whole tape (no
# recomputation in backward); its home is backend/estimation/budget.py, which counts it in the projection.

# Adam steps on the field's raw parameters. A global or per-particle value maps one-to-one to log E;
# a triplane's planes and head move every particle at once, so a step must be far smaller.
DEFAULT_LEARNING_RATES = {"global": 0.1, "per_particle": 0.1, "kan_triplane": 0.005, "mlp_triplane": 0.005}
# After the ladder a global or per-particle start is within a quarter decade (~0.6 in ln E), and a raw step of
# 0.1 moves ln E by up to ~0.3: smaller steps refine without overshooting. (A triplane's steps are small already.)
REFINE = 0.3


@dataclass
class Scene:
    """What one estimation renders and simulates, on the compute device."""

    particles: SceneParticles  # possibly a subsample of the object (estimate.max_particles)
    colors: torch.Tensor  # (n, 3) in [0, 1], visible splats
    opacities: torch.Tensor  # (n,)
    cameras: list  # one Camera per rendered frame
    background: torch.Tensor
    all_positions: np.ndarray  # (N, 3) every visible point of the object, for the final materials
    subset: np.ndarray | None  # indices of the simulated visible points among all N, or None for all
    rest_frame: torch.Tensor | None = None  # frame 0 (3, H, W), rendered once (see simulate_and_render)


def run_estimate(job: protocol.Job, scene_arrays: dict, reporter: Reporter, token: CancelToken, device: str) -> dict:
    try:
        return _estimate(job, scene_arrays, reporter, token, device)
    finally:
        gc.unfreeze()  # (frozen after the set-up, see _estimate)


def _estimate(job: protocol.Job, scene_arrays: dict, reporter: Reporter, token: CancelToken, device: str) -> dict:
    est, sim = job.estimate, job.simulation
    torch.manual_seed(int(est["seed"]))
    n_render = est["frames_per_group"] * est["boost_groups"]
    check_inputs(est, job.folder, n_render)
    reporter.stage("load", "Preparing particles, camera and supervision")
    scene = prepare_scene(scene_arrays, sim, est, reporter, device)
    # The rate the motion is sampled at is known before a video model loads (its default rate): the budget is
    # projected at it, and only a loaded model that says otherwise changes it.
    sampling = estimation_sampling(est, sim, job.folder)
    check_budget(est, sampling_simulation(sim, sampling), scene, device, n_render, reporter)  # before a model loads
    supervision = make_supervision(est, job.folder, device, n_render, scene, reporter)
    set_estimate_threads(device, est["prior"])
    if supervision.model_fps:
        sampling = estimation_sampling(est, sim, job.folder, supervision.model_fps)
    reporter.stage("load", f"Sampling the motion at {sampling.describe()}", data={"sample_fps": sampling.fps})
    token.check()
    dsim = make_differentiable_sim(scene.particles, sampling_simulation(sim, sampling), est, device, reporter)
    still = held_still_text(dsim.n_all, dsim.n)
    if still:
        reporter.stage("load", still[:1].upper() + still[1:], data={"n_simulated": dsim.n})
    # Every rollout allocates thousands of small objects (warp arrays, tape records), and each full
    # collection walks the few hundred thousand objects torch, warp and a video model hold: once the
    # set-up is done, those stay out of the collector (a tenth of an iteration's CPU time).
    gc.freeze()
    out = job.output_dir
    ckpt_path = out / protocol.ESTIMATE_CHECKPOINT_FILE
    fingerprint = protocol.arrays_fingerprint(scene_arrays, [job.simulation, {k: v for k, v in est.items()
                                                                          if k not in _RESUMABLE_KEYS}])
    resumed = None
    if ckpt_path.exists():
        field = make_material_field(est, scene.particles, device, reporter)
        optimizer = torch.optim.Adam(field.parameters())
        resumed = load_checkpoint(ckpt_path, fingerprint, field, optimizer, reporter)
    if resumed is not None:
        history, best, ladder_json = resumed
    else:
        ladder = global_look(est, scene, dsim, supervision, n_render, reporter, token, device)
        field = make_material_field(est, scene.particles, device, reporter, E=None if ladder is None else ladder.E)
        optimizer = torch.optim.Adam(field.parameters())
        history, best = [], Best(by_loss=supervision.kind == "reference")
        ladder_json = None if ladder is None else ladder.to_json()
    refine = REFINE if ladder_json and est["field"] in ("global", "per_particle") else 1.0
    base_lr = float(est["learning_rate"] or DEFAULT_LEARNING_RATES[est["field"]] * refine)
    stop = make_stop_rule(est)
    for h in history:  # the stop rule sees the resumed iterations again
        if h["learned"]:
            stop.update(h["loss"], _tracked(h))
    total = int(est["iterations"])
    converged, reason = False, "reached the iteration limit"
    reporter.stage("estimate", f"Estimating materials with the {est['prior']} prior ({total} iterations at most)")
    failures = 0  # iterations in a row that gave no usable gradient
    for it in range(len(history), total):
        token.check()
        t0 = time.monotonic()
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(base_lr, it, total) / 2 ** failures  # a smaller step after a failure
        record = iteration(field, dsim, scene, supervision, optimizer, it, total, n_render, best)
        record["seconds"] = time.monotonic() - t0
        if supervision.kind == "reference" and history and record["loss"] > history[-1]["loss"]:
            restart_momentum(optimizer)  # (a generative prior's loss is too noisy to tell a rise)
        history.append(record)
        failures = 0 if record["learned"] else failures + 1
        if failures:
            recover(field, best, failures, record["failure"], reporter)
        converged = stop.update(record["loss"], _tracked(record)) if record["learned"] else False
        save_checkpoint(ckpt_path, fingerprint, field, optimizer, history, best, ladder_json)
        reporter.progress("estimate", it + 1, total, loss=record["loss"] if np.isfinite(record["loss"]) else None,
                          message=f"iteration {it + 1}: E median {record['E_p50']:.3g} Pa",
                          data={k: record[k] for k in (*protocol.E_PERCENTILES, "seconds")})
        if converged:
            reason = stop.reason
            break
        if failures >= MAX_FAILURES:
            reason = (f"stopped early: {failures} iterations in a row gave no usable gradient ({record['failure']}); "
                      f"the best materials so far (iteration {best.iteration}) were written")
            reporter.warning(f"Estimation {reason}. Try a smaller learning rate, a finer grid or a narrower E range")
            break
    return write_outputs(job, scene, field, dsim, history, converged, reason, reporter, n_render, best, ladder_json)


# Settings that may change between a run and its resumption (they do not change the iterations run so far).
_RESUMABLE_KEYS = ("iterations", "tolerance_decades", "stop_rule", "stop_window", "stop_tolerance", "min_iterations")


# --------------------------------------------------------------------------- one iteration
def iteration(field, dsim, scene: Scene, supervision: Supervision, optimizer, it: int, total: int, n_render: int,
              best: "Best") -> dict:
    """Evaluate the loss at the field's current point, remember it if it is the best, then step.

    The returned record describes the evaluated point (before the step): its loss and E percentiles.
    A failed simulation or a non-finite gradient entry is recorded as ``failure`` (learned = False)."""
    from ..mpm import SimulationDiverged

    optimizer.zero_grad(set_to_none=True)
    mats = field()
    record = {"iteration": it + 1, **e_percentiles(mats["E"][: scene.particles.n_visible]), "learned": False,
              "failure": ""}
    try:
        video = simulate_and_render(dsim, mats, scene, n_render)
    except SimulationDiverged as exc:
        return dict(record, loss=float("nan"), failure=f"the simulation diverged: {exc}")
    if not torch.isfinite(video).all():
        return dict(record, loss=float("nan"), failure="the rendered video has NaN values")
    loss, parts = supervision.loss(video, it, total)
    record.update({k: float(v) for k, v in parts.items()}, loss=float(loss.detach()))
    best.consider(record, field)
    reg = field.regularizer()
    record["regularizer"] = float(reg.detach())
    (loss + reg).backward()
    dropped, finite = _clean_gradients(field)
    if finite:
        torch.nn.utils.clip_grad_norm_(field.parameters(), 1.0)
        optimizer.step()
    if dropped:
        record["failure"] = f"{dropped} non-finite gradient entr{'y' if dropped == 1 else 'ies'} dropped"
    record["learned"] = finite and not dropped
    return record


def restart_momentum(optimizer) -> None:
    """Forget Adam's running direction once the loss rises (an adaptive restart): the step that raised it
    overshot the minimum, and momentum would carry the next steps further the wrong way."""
    for group_state in optimizer.state.values():
        if "exp_avg" in group_state:
            group_state["exp_avg"].zero_()


MAX_FAILURES = 5  # iterations in a row without a usable gradient before the run stops with its best so far
NUDGE = 1e-3  # raw-parameter noise after a failure, times the failures in a row: never the same point again


@torch.no_grad()
def recover(field, best: "Best", failures: int, why: str, reporter: Reporter) -> None:
    """After a failed iteration: from a failed simulation go back to the best point; either way move to a
    slightly perturbed point, so the next iteration cannot recompute the same failure."""
    if why.startswith("the simulation") or why.startswith("the rendered"):
        if best.state is not None:
            field.load_state_dict(best.state)
    for p in field.parameters():
        p.add_(NUDGE * failures * torch.randn_like(p))
    reporter.warning(f"An iteration gave no usable gradient ({why}); continuing from a nearby point "
                     f"with a smaller step ({failures} in a row, {MAX_FAILURES} end the run)")


class Best:
    """The point to write: the lowest-loss point evaluated so far (its iteration, loss, E percentiles and
    field parameters) when the loss is a distance (a reference clip). The supervision has no per-region
    loss (each judge sees whole frames), so the best point is chosen by the total loss for every region
    at once. A generative prior's loss is a surrogate drawn with fresh noise and diffusion time at every
    iteration, so comparing iterations by it would pick noise: there the latest evaluated point is kept."""

    CRITERIA = {True: "lowest total loss (the supervision has no per-region loss)",
                False: "latest point (a generative prior's loss is too noisy to compare iterations by)"}

    def __init__(self, by_loss: bool = True, iteration: int = 0, loss: float = float("inf"),
                 record: dict | None = None, state=None):
        self.by_loss, self.iteration, self.loss, self.record, self.state = by_loss, iteration, loss, record or {}, state

    def consider(self, record: dict, field) -> None:
        if np.isfinite(record["loss"]) and (record["loss"] < self.loss or not self.by_loss):
            self.iteration, self.loss, self.record = record["iteration"], record["loss"], dict(record)
            self.state = {k: v.detach().clone().cpu() for k, v in field.state_dict().items()}

    def to_json(self) -> dict:
        return {"iteration": self.iteration, "loss": self.loss, "chosen_by": self.CRITERIA[self.by_loss],
                **{k: self.record[k] for k in protocol.E_PERCENTILES if k in self.record}}


# The CPU compositor's tile side for the estimation's renders (the image is the same for any size). A tile
# leaves the compositing loop once all its pixels are opaque; an estimated object is mostly opaque and
# small in a small image, so small tiles stop sooner: 4 px rendered the 5k-splat cube at 64x64 in 60-80%
# of the time 8 px took, and was no slower at 128x72 and 256x144 (benchmarks/estimate.py --baseline).
RENDER_TILE_SIZE = 4


def simulate_and_render(dsim, mats: dict, scene: Scene, n_render: int) -> torch.Tensor:
    """(n_render, 3, H, W): the rest frame, then n_render - 1 simulated frames."""
    from ..render import render_splats

    p = scene.particles
    n = p.n_visible
    velocity = torch.as_tensor(p.velocity, device=mats["log_E"].device)
    positions, covs = dsim(mats["log_E"], mats["nu"], mats["rho"], velocity, n_render - 1)
    frames = [rest_frame(scene)]
    for f in range(1, n_render):
        out = render_splats(positions[f - 1, :n], colors=scene.colors, opacities=scene.opacities,
                            covars=covs[f - 1, :n], camera=scene.cameras[f], background=scene.background,
                            tile_size=RENDER_TILE_SIZE)
        frames.append(out.rgb.permute(2, 0, 1))
    return torch.stack(frames)


def rest_frame(scene: Scene) -> torch.Tensor:
    """Frame 0, the rest pose from the first camera: the same every iteration and free of any
    learned parameter, so it is rendered once."""
    if scene.rest_frame is None:
        scene.rest_frame = first_frame(scene).to(scene.colors.device)
    return scene.rest_frame


def _clean_gradients(field) -> tuple[int, bool]:
    """Zero the non-finite entries of the gradients (a degenerate frame must not poison the field).
    Returns (entries dropped, whether any finite non-zero entry is left to step with)."""
    finite, dropped = False, 0
    for p in field.parameters():
        if p.grad is None:
            continue
        ok = torch.isfinite(p.grad)
        if not bool(ok.all()):
            dropped += int((~ok).sum())
            p.grad = torch.where(ok, p.grad, torch.zeros_like(p.grad))
        finite = finite or bool((ok & (p.grad != 0)).any())
    if dropped:
        log.warning("%d non-finite gradient entries dropped this iteration", dropped)
    return dropped, finite


def cosine_lr(base: float, it: int, total: int, floor: float = 0.1) -> float:
    """Cosine decay to floor*base over the run: big steps while far off, no momentum overshoot at the end.
    A function of the iteration alone, so a resumed run continues on the same schedule."""
    frac = it / max(total - 1, 1)
    return base * (floor + (1.0 - floor) * 0.5 * (1.0 + np.cos(np.pi * frac)))


def _tracked(record: dict) -> dict:
    """What the stop rule watches besides the loss: ln E at the 5th, 50th and 95th percentile."""
    return {f"ln {k}": float(np.log(record[k])) for k in protocol.E_PERCENTILES}


def e_percentiles(E: torch.Tensor) -> dict:
    return protocol.e_percentiles(E.detach().float().cpu().numpy())


# --------------------------------------------------------------------------- set-up
def prepare_scene(arrays: dict, sim: dict, est: dict, reporter: Reporter, device: str) -> Scene:
    from ..render import Camera

    all_positions = np.asarray(arrays["positions"], np.float32)
    n_all = len(all_positions)
    subset = None
    if est["max_particles"] and n_all > est["max_particles"]:
        subset = voxel_subsample(np.asarray(arrays["positions"]), int(est["max_particles"]))
        reporter.warning(f"Estimating on {len(subset)} of {n_all} points (estimate.max_particles); "
                         "the result is transferred to every point")
        arrays = subsample_arrays(arrays, subset, n_all)
    particles = build_particles(arrays, sim, reporter)
    n = particles.n_visible
    f_dc = np.asarray(arrays.get("f_dc", np.zeros((n, 3))), np.float32)
    colors = dc_to_rgb(f_dc)
    opacity = 1.0 / (1.0 + np.exp(-np.asarray(arrays.get("opacity", np.full(n, 3.0)), np.float32)))
    camera = Camera.from_dict(est["camera"])
    n_render = est["frames_per_group"] * est["boost_groups"]
    degrees = float(est["orbit_degrees"])
    pivot = all_positions.mean(axis=0)
    cameras = orbit_about(camera, pivot, n_render, degrees) if degrees else [camera] * n_render
    dev = torch.device(device)
    return Scene(particles, torch.as_tensor(colors, device=dev), torch.as_tensor(opacity, device=dev), cameras,
                 torch.zeros(3, device=dev), all_positions, subset)


def orbit_about(camera, pivot: np.ndarray, n: int, degrees: float) -> list:
    """The artist's camera swung about the vertical axis through ``pivot``, over ``degrees`` in ``n`` steps."""
    from ..render import Camera

    cams = []
    for angle in np.radians(np.linspace(0.0, degrees, n)):
        c, s = np.cos(angle), np.sin(angle)
        rot = np.array([[c, -s, 0, 0], [s, c, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
        to_pivot, back = np.eye(4), np.eye(4)
        to_pivot[:3, 3], back[:3, 3] = -pivot, pivot
        move = back @ rot @ to_pivot  # world -> world: the camera's pose is carried by this motion
        cams.append(Camera(camera.viewmat @ np.linalg.inv(move), camera.K, camera.width, camera.height,
                           camera.near, camera.far))
    return cams


def voxel_subsample(positions: np.ndarray, target: int) -> np.ndarray:
    """Indices of about ``target`` points, one per voxel, with the voxel size found by bisection."""
    lo_pt, extent = positions.min(0), np.ptp(positions, axis=0).max() + 1e-9
    lo, hi = extent / 4096.0, extent
    best = np.arange(0, len(positions), max(1, len(positions) // target))[:target]
    for _ in range(30):
        size = np.sqrt(lo * hi)
        keys = np.floor((positions - lo_pt) / size).astype(np.int64)
        _, first = np.unique(keys, axis=0, return_index=True)
        if len(first) > target:
            lo = size
        else:
            hi, best = size, np.sort(first)
            if len(first) > 0.9 * target:
                break
    return best


def subsample_arrays(arrays: dict, subset: np.ndarray, n_all: int) -> dict:
    """Per-point arrays restricted to ``subset``; splats grow so that the sparser cloud still covers the surface."""
    out = {k: (v[subset] if np.ndim(v) and len(v) == n_all else v) for k, v in arrays.items()}
    if "scale" in out:
        out["scale"] = out["scale"] + np.float32(np.log(n_all / len(subset)) / 3.0)
    return out


def make_material_field(est: dict, p: SceneParticles, device: str, reporter: Reporter | None = None,
                        E: np.ndarray | None = None):
    """The field to learn, starting from the scene's E (or ``E``, e.g. the ladder's choice per point)."""
    from ..field import make_field

    lo, hi = est["E_range"]
    outside = int(np.count_nonzero((p.E < lo) | (p.E > hi)))
    if outside and reporter and E is None:
        reporter.warning(f"{outside} points start with E outside the estimation range [{lo:g}, {hi:g}] Pa; "
                         "they start at the nearest bound (widen estimate.E_range to allow more)")
    rho_range = None
    if est["estimate_density"]:
        rho_range = (float(np.min(p.rho)) / 10.0, float(np.max(p.rho)) * 10.0)
    positions = torch.as_tensor(p.positions, device=device)
    # A start on the range's edge saturates the field's sigmoid (no gradient): start just inside it.
    start_E = np.clip(p.E if E is None else E, lo * 1.05, hi / 1.05)
    init = {"E": torch.as_tensor(start_E, device=device), "nu": torch.as_tensor(p.nu, device=device),
            "rho": torch.as_tensor(p.rho, device=device)}
    lock = torch.as_tensor(p.lock, device=device) if p.lock.any() else None
    return make_field(est["field"], positions, E_range=tuple(est["E_range"]), nu_range=tuple(est["nu_range"]),
                      rho_range=rho_range, init=init, lock=lock, learn_nu=bool(est["learn_nu"])).to(device)


def global_look(est: dict, scene: Scene, dsim, supervision: Supervision, n_render: int, reporter: Reporter,
                token: CancelToken, device: str):
    """The ladder (backend/estimation/ladder.py): the start E per point, or None when the ladder is off.

    Auto (ladder_rungs None) runs it for the reference prior, whose loss is a distance between videos;
    a generative prior's loss value is a noisy surrogate (a fresh noise draw and diffusion time per call),
    so comparing rungs by it would mislead: it is only used there when ladder_rungs is set."""
    from ..estimation import ladder as ladder_mod
    from ..mpm import SimulationDiverged

    count = est["ladder_rungs"]
    if count == 0 or (count is None and supervision.kind != "reference"):
        return None
    p = scene.particles
    values = ladder_mod.rungs(est["E_range"], count)
    spatial = est["field"] != "global"
    # The regions cover the parts that move; anchored points follow their nearest one (in the demo a region
    # spent on the pot had hidden the plant's parts).
    labels = ladder_mod.spatial_regions(p.positions, int(est["ladder_regions"]) if spatial else 1, ~p.lock,
                                        int(est["seed"]), held=p.anchor)
    dev = torch.device(device)
    nu, rho = torch.as_tensor(p.nu, device=dev), torch.as_tensor(p.rho, device=dev)
    seed = int(est["seed"])
    workers = ladder_workers(device, supervision.kind, dsim.n_threads)
    sims = queue.SimpleQueue()  # the simulators free to run a rung: one per worker
    for sim in [dsim] + [dsim.twin() for _ in range(workers - 1)]:
        sims.put(sim)
    rest_frame(scene)  # rendered once, before any worker wants it

    @torch.no_grad()
    def evaluate(E: np.ndarray) -> float:
        token.check()
        if supervision.kind not in protocol.CLIP_PRIORS:
            supervision.generator.manual_seed(seed)  # the same noise for every rung (generative priors)
        mats = {"log_E": torch.as_tensor(np.log(E), dtype=torch.float32, device=dev), "nu": nu, "rho": rho}
        sim = sims.get()
        try:
            video = simulate_and_render(sim, mats, scene, n_render)
        except SimulationDiverged:
            return float("inf")
        finally:
            sims.put(sim)
        loss = float(supervision.loss(video, 0, int(est["iterations"]))[0]) if torch.isfinite(video).all() else np.inf
        return loss if np.isfinite(loss) else float("inf")

    def on_try(step: int, total: int, row: dict) -> None:
        reporter.progress("ladder", step, total, loss=row["loss"],
                          message=f"{row['pass']}: E {row['E']:.3g} Pa, loss "
                                  + ("failed" if row["loss"] is None else f"{row['loss']:.4g}"))

    reporter.stage("ladder", f"Trying {len(values)} stiffness values from {values[0]:.3g} to {values[-1]:.3g} Pa"
                   + (f" over {labels.max() + 1} regions" if labels.max() > 0 else "")
                   + (f", {workers} at a time" if workers > 1 else ""))
    # evaluate() runs under no_grad, so each rung is a forward-only simulation (DifferentiableSim tapes nothing)
    with ThreadPoolExecutor(workers, thread_name_prefix="ladder") as pool:

        def side_by_side(fn, trials: list) -> Iterator:
            """fn over the trials on the pool, stiffest first (a rung's substeps grow as sqrt(E): the stiffest
            can take as long as the others together); the results in the trials' order."""
            stiffest_first = sorted(range(len(trials)), key=lambda i: -trials[i].max())
            futures = {i: pool.submit(fn, trials[i]) for i in stiffest_first}
            return (futures[i].result() for i in range(len(trials)))

        result = ladder_mod.climb(evaluate, np.asarray(p.E, np.float64), labels, values, on_try,
                                  mapper=side_by_side if workers > 1 else map)
    supervision.generator.manual_seed(seed)
    if result.start:
        log.info("ladder start E per region: %s", ", ".join(f"{v:.3g}" for v in result.start))
    else:
        reporter.warning("Every stiffness on the ladder failed to simulate; starting from the scene's values")
    return result


def make_differentiable_sim(p: SceneParticles, sim: dict, est: dict, device: str, reporter: Reporter | None = None):
    """The rollout starts from the same rest state under gravity as a bake (solved once with the starting
    materials; each rollout rescales its strain to the candidate E, see DifferentiableSim). The scene's
    densities pick the anchors' fixed nodes, as in a bake, however the estimate changes them."""
    from ..mpm import DifferentiableSim

    config = sim_config(sim)
    rest = rest_state(p, sim, config, reporter or Reporter(), device)
    return DifferentiableSim(p.positions, p.material_id, p.anchor, p.cov0, config, device=warp_device(device),
                             bptt_substeps=est["bptt_substeps"], full_tape_mb=FULL_TAPE_MB, grid_store_mb=GRID_STORE_MB,
                             F0=None if rest is None else rest.F, F0_E=p.E, rho=p.rho)


def check_budget(est: dict, sim: dict, scene: Scene, device: str, n_render: int, reporter: Reporter) -> None:
    """Refuse (BadJob, exit 2) an estimation whose iteration is projected past the memory it may use.
    sim: the simulation settings estimation runs with (frames at the sampling rate, sampling_simulation)."""
    from ..estimation import budget
    from ..mpm.grid import GridMapping, plan_substeps
    from ..mpm.solver import max_wave_speed

    p = scene.particles
    config = sim_config(sim)
    dx = GridMapping.build(config, p.positions).dx
    c_max = max_wave_speed(p.E, p.nu, p.rho, p.material_id)
    spf = plan_substeps(config, dx, c_max, float(np.linalg.norm(p.velocity, axis=1).max())).n
    cam = scene.cameras[0]

    def project_at(n: int, width: int, height: int) -> budget.Projection:
        return budget.project(n_particles=n, width=width, height=height, frames=n_render, substeps_per_frame=spf,
                              n_grid=config.n_grid, prior=est["prior"], device=device)

    projection = project_at(p.n_total, cam.width, cam.height)
    limit = float(est["memory_limit_mb"]) or budget.available_memory_mb()
    reporter.stage("load", f"{p.n_total} particles, {cam.width}x{cam.height} px, {spf} substeps per frame: "
                           f"{projection.text()}")
    if budget.refusal(projection, limit, "") is None:
        return
    fix = budget.fix_text(*budget.what_fits(project_at, p.n_total, cam.width, cam.height, limit),
                          "estimate.max_particles (Max particles)", "the camera's long side (Resolution)")
    raise protocol.BadJob(budget.refusal(projection, limit, fix))


# --------------------------------------------------------------------------- checkpoints
def save_checkpoint(path: Path, fingerprint: str, field, optimizer, history: list, best: Best | None = None,
                    ladder: dict | None = None) -> None:
    """Plain arrays + JSON (backend.io.statefile): a checkpoint can never carry code."""
    state = {"field": field.state_dict(), "optimizer": optimizer.state_dict(), "history": history,
             "best": None if best is None else {"by_loss": best.by_loss, "iteration": best.iteration,
                                                "loss": best.loss, "record": best.record, "state": best.state},
             "ladder": ladder}
    save_state(path, fingerprint, state)


def load_checkpoint(path: Path, fingerprint: str, field, optimizer, reporter: Reporter):
    """(history, best, ladder summary) of the saved run, the field and optimizer continuing from it; or None.
    A checkpoint that is foreign (other settings), unreadable, holds NaN or does not fit this field is never
    used: the run starts over and says why. Job folders travel, so the file is untrusted."""
    if not path.exists():
        return None
    before = {k: v.detach().clone() for k, v in field.state_dict().items()}
    try:
        state = load_state(path, fingerprint, as_tensor=torch.from_numpy)
        field.load_state_dict(state["field"])
        optimizer.load_state_dict(state["optimizer"])
        history = [dict(h) for h in state["history"]]
        best, ladder = Best(**state["best"]) if state.get("best") else Best(), state.get("ladder")
    except (StateRejected, KeyError, TypeError, ValueError, RuntimeError) as exc:
        reason = str(exc) if isinstance(exc, StateRejected) else f"its layout does not fit this field ({exc})"
        reporter.warning(f"Not resuming from {path.name}: {reason}. Starting over")
        field.load_state_dict(before)  # nothing of a rejected file may stay in the field or the optimizer
        optimizer.state.clear()
        return None
    reporter.warning(f"Resuming from iteration {len(history) + 1}")
    return history, best, ladder


# --------------------------------------------------------------------------- outputs
def materials_for_all_points(field, scene: Scene) -> dict:
    """Per-point materials of the whole object; a subsample's values reach the rest by nearest neighbour."""
    n = scene.particles.n_visible
    arrays = {k: v[:n] for k, v in field.materials().items()}
    if scene.subset is None:
        return arrays
    from scipy.spatial import cKDTree

    _, nearest = cKDTree(scene.all_positions[scene.subset]).query(scene.all_positions)
    return {k: v[nearest] for k, v in arrays.items()}


def write_outputs(job, scene: Scene, field, dsim, history, converged, reason, reporter, n_render, best: Best,
                  ladder: dict | None) -> dict:
    """Write the best point's materials, its preview, the plot and the summary (with the last point's distance)."""
    from .report import write_loss_plot, write_preview

    reporter.stage("write", "Writing materials, preview and plot")
    out = job.output_dir
    last = materials_for_all_points(field, scene)
    if best.state is not None:
        field.load_state_dict(best.state)
    arrays = materials_for_all_points(field, scene)
    protocol.check_arrays(arrays, protocol.MATERIAL_ARRAYS, protocol.MATERIALS_FILE)
    protocol.atomic_save_npz(out / protocol.MATERIALS_FILE, **arrays)
    with torch.no_grad():
        video = simulate_and_render(dsim, field(), scene, n_render)
    write_preview(video, out / protocol.PREVIEW_FILE, fps=dsim.config.fps)  # the frames' own rate
    write_loss_plot(history, out / protocol.LOSS_PLOT_FILE, best=best.iteration, ladder=ladder)
    learned = ["E"] + (["nu"] if job.estimate["learn_nu"] else []) + (["density"] if job.estimate["estimate_density"] else [])
    summary = {"settings": {"simulation": job.simulation, "estimate": job.estimate}, "history": history,
               "converged": converged, "stop_reason": reason, "iterations": len(history), "sample_fps": dsim.config.fps,
               "seconds": float(sum(h["seconds"] for h in history)), "learned": learned,
               "held": _held_note(job.estimate), "ladder": ladder,
               "best": best.to_json(), "last": last_vs_best(history, last, arrays),
               **e_percentiles(torch.as_tensor(arrays["youngs_modulus"]))}
    protocol.atomic_write_json(out / protocol.SUMMARY_FILE, summary)
    return {"command": "estimate", "materials": protocol.MATERIALS_FILE, "summary": protocol.SUMMARY_FILE,
            "preview": protocol.PREVIEW_FILE, "loss_plot": protocol.LOSS_PLOT_FILE, "converged": converged,
            "stop_reason": reason, "iterations": len(history), "best_iteration": best.iteration,
            **{k: summary[k] for k in protocol.E_PERCENTILES}}


def last_vs_best(history: list, last: dict, best: dict) -> dict:
    """How far the run's final point is from the written (best) one: loss of the last evaluated iteration,
    and the final field's E against the best's (median ratio, largest per-point distance in decades)."""
    e_last, e_best = (np.asarray(m["youngs_modulus"], np.float64) for m in (last, best))
    finite = [h for h in history if np.isfinite(h["loss"])]
    return {"iteration": history[-1]["iteration"] if history else 0,
            "loss": finite[-1]["loss"] if finite else None,
            "E_median_ratio": float(np.median(e_last) / np.median(e_best)),
            "E_max_decades": float(np.max(np.abs(np.log10(e_last / e_best)))),
            "nu_max_difference": float(np.max(np.abs(last["poisson_ratio"] - best["poisson_ratio"])))}


def _held_note(est: dict) -> str:
    held = [name for name, key in (("Poisson's ratio", "learn_nu"), ("density", "estimate_density")) if not est[key]]
    if not held:
        return ""
    return (f"{' and '.join(held)} held at the scene's values"
            + (": a video of a sway or wobble hardly shows Poisson's ratio" if not est["learn_nu"] else ""))
