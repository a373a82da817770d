"""The ``estimate`` job: learn per-particle materials by differentiating video supervision through MPM.

One iteration:  material field -> (E, nu, rho) per particle -> differentiable MPM over M*T frames ->
splats rendered along the camera -> frame-boosted groups -> video loss (MDS / SDS-T from a diffusion
prior, or L2+SSIM against a reference clip) -> backward into the field -> Adam step.

Every iteration emits a progress event and saves a checkpoint, so a cancelled or killed run resumes
where it stopped; the convergence test (E percentiles within a tolerance over the last 3 iterations)
ends the loop early.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import protocol
from .convergence import ConvergenceMonitor
from .device import warp_device
from .jobctl import CancelToken, Reporter, log
from .particles import SceneParticles, build_particles
from .simulate import rest_state, sim_config
from .statefile import StateRejected, load_state, save_state
from .supervision import Supervision, check_inputs, make_supervision


# Adam steps on the field's raw parameters. A global or per-particle value maps one-to-one to log E;
# a triplane's planes and head move every particle at once, so a step must be far smaller.
MAX_STALLED = 3  # iterations in a row without a finite gradient before the run is declared diverged
DEFAULT_LEARNING_RATES = {"global": 0.1, "per_particle": 0.1, "kan_triplane": 0.005, "mlp_triplane": 0.005}


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


def run_estimate(job: protocol.Job, scene_arrays: dict, reporter: Reporter, token: CancelToken, device: str) -> dict:
    est, sim = job.estimate, job.simulation
    torch.manual_seed(int(est["seed"]))
    n_render = est["frames_per_group"] * est["boost_groups"]
    check_inputs(est, job.folder, n_render)
    reporter.stage("load", "Preparing particles, camera and supervision")
    scene = prepare_scene(scene_arrays, sim, est, reporter, device)
    supervision = make_supervision(est, job.folder, device, n_render, scene, reporter)
    token.check()
    field = make_material_field(est, scene.particles, device, reporter)
    dsim = make_differentiable_sim(scene.particles, sim, est, device, reporter)
    base_lr = float(est["learning_rate"] or DEFAULT_LEARNING_RATES[est["field"]])
    optimizer = torch.optim.Adam(field.parameters(), lr=base_lr)
    convergence = ConvergenceMonitor(window=3, tolerance_decades=float(est["tolerance_decades"]))
    out = job.output_dir
    ckpt_path = out / protocol.ESTIMATE_CHECKPOINT_FILE
    fingerprint = protocol.arrays_fingerprint(scene_arrays, [job.simulation, {k: v for k, v in est.items()
                                                                          if k not in ("iterations", "tolerance_decades")}])
    history, start = load_checkpoint(ckpt_path, fingerprint, field, optimizer, reporter)
    for h in history:  # the convergence test sees the resumed iterations again
        if h.get("learned", True):
            convergence.update(_tracked(h))
    total = int(est["iterations"])
    converged, reason = False, "reached the iteration limit"
    reporter.stage("estimate", f"Estimating materials with the {est['prior']} prior ({total} iterations at most)")
    stalled = 0
    for it in range(start, total):
        token.check()
        t0 = time.monotonic()
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(base_lr, it, total)
        loss, parts = iteration(field, dsim, scene, supervision, optimizer, it, total, n_render)
        with torch.no_grad():
            stats = e_percentiles(field()["E"][: scene.particles.n_visible])
        record = {"iteration": it + 1, "loss": loss, "seconds": time.monotonic() - t0, **stats, **parts}
        history.append(record)
        stalled = 0 if record["learned"] else stalled + 1
        if stalled >= MAX_STALLED:
            raise protocol.Diverged(
                f"the simulation gave no usable gradient for {MAX_STALLED} iterations in a row (E median "
                f"{stats['E_p50']:.3g} Pa); try a smaller learning rate, a finer grid or a narrower E range")
        # An iteration that changed nothing must not count as "stable" for the convergence test.
        converged = convergence.update(_tracked(record)) if record["learned"] else False
        save_checkpoint(ckpt_path, fingerprint, field, optimizer, history)
        reporter.progress("estimate", it + 1, total, loss=loss,
                          message=f"iteration {it + 1}: E median {stats['E_p50']:.3g} Pa",
                          data={k: record[k] for k in ("E_p5", "E_p50", "E_p95", "seconds")})
        if converged:
            reason = convergence.reason
            break
    return write_outputs(job, scene, field, dsim, history, converged, reason, reporter, n_render)


# --------------------------------------------------------------------------- one iteration
def iteration(field, dsim, scene: Scene, supervision: Supervision, optimizer, it: int, total: int, n_render: int):
    optimizer.zero_grad(set_to_none=True)
    mats = field()
    video = simulate_and_render(dsim, mats, scene, n_render)
    if not torch.isfinite(video).all():
        raise protocol.Diverged("the rendered video has NaN values; try a lower E range or a finer grid")
    loss, parts = supervision.loss(video, it, total)
    reg = field.regularizer()
    (loss + reg).backward()
    learned = _clean_gradients(field)
    if learned:
        torch.nn.utils.clip_grad_norm_(field.parameters(), 1.0)
        optimizer.step()
    parts = {k: float(v) for k, v in parts.items()}
    parts["regularizer"] = float(reg.detach())
    parts["learned"] = learned
    return float(loss.detach()), parts


def simulate_and_render(dsim, mats: dict, scene: Scene, n_render: int) -> torch.Tensor:
    """(n_render, 3, H, W): the rest frame, then n_render - 1 simulated frames."""
    from .render import render_splats

    p = scene.particles
    n = p.n_visible
    velocity = torch.as_tensor(p.velocity, device=mats["log_E"].device)
    positions, covs = dsim(mats["log_E"], mats["nu"], mats["rho"], velocity, n_render - 1)
    rest_pos = torch.as_tensor(p.positions[:n], device=positions.device)
    rest_cov = torch.as_tensor(p.cov0[:n], device=covs.device)
    frames = []
    for f in range(n_render):
        means = rest_pos if f == 0 else positions[f - 1, :n]
        cov = rest_cov if f == 0 else covs[f - 1, :n]
        out = render_splats(means, colors=scene.colors, opacities=scene.opacities, covars=cov,
                            camera=scene.cameras[f], background=scene.background)
        frames.append(out.rgb.permute(2, 0, 1))
    return torch.stack(frames)


def _clean_gradients(field) -> bool:
    """Zero the non-finite entries of the gradients (a degenerate frame must not poison the field).
    Returns False when no finite gradient was left, i.e. this iteration taught nothing."""
    finite = False
    for p in field.parameters():
        if p.grad is None:
            continue
        ok = torch.isfinite(p.grad)
        if not bool(ok.all()):
            p.grad = torch.where(ok, p.grad, torch.zeros_like(p.grad))
        finite = finite or bool((ok & (p.grad != 0)).any())
    if not finite:
        log.warning("no finite gradient this iteration: the field is unchanged")
    return finite


def cosine_lr(base: float, it: int, total: int, floor: float = 0.1) -> float:
    """Cosine decay to floor*base over the run: big steps while far off, no momentum overshoot at the end.
    A function of the iteration alone, so a resumed run continues on the same schedule."""
    frac = it / max(total - 1, 1)
    return base * (floor + (1.0 - floor) * 0.5 * (1.0 + np.cos(np.pi * frac)))


def _tracked(record: dict) -> dict:
    return {k: record[k] for k in ("E_p5", "E_p50", "E_p95")}


def e_percentiles(E: torch.Tensor) -> dict:
    e = E.detach().float().cpu().numpy()
    p5, p50, p95 = np.percentile(e, [5, 50, 95])
    return {"E_p5": float(p5), "E_p50": float(p50), "E_p95": float(p95)}


# --------------------------------------------------------------------------- set-up
def prepare_scene(arrays: dict, sim: dict, est: dict, reporter: Reporter, device: str) -> Scene:
    from .render import Camera

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
    colors = np.clip(0.5 + SH_C0 * f_dc, 0.0, 1.0)
    opacity = 1.0 / (1.0 + np.exp(-np.asarray(arrays.get("opacity", np.full(n, 3.0)), np.float32)))
    camera = Camera.from_dict(est["camera"])
    n_render = est["frames_per_group"] * est["boost_groups"]
    degrees = float(est["orbit_degrees"])
    pivot = all_positions.mean(axis=0)
    cameras = orbit_about(camera, pivot, n_render, degrees) if degrees else [camera] * n_render
    dev = torch.device(device)
    return Scene(particles, torch.as_tensor(colors, device=dev), torch.as_tensor(opacity, device=dev), cameras,
                 torch.zeros(3, device=dev), all_positions, subset)


SH_C0 = 0.28209479177387814


def orbit_about(camera, pivot: np.ndarray, n: int, degrees: float) -> list:
    """The artist's camera swung about the vertical axis through ``pivot``, over ``degrees`` in ``n`` steps."""
    from .render import Camera

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


def make_material_field(est: dict, p: SceneParticles, device: str, reporter: Reporter | None = None):
    from .field import make_field

    lo, hi = est["E_range"]
    outside = int(np.count_nonzero((p.E < lo) | (p.E > hi)))
    if outside and reporter:
        reporter.warning(f"{outside} points start with E outside the estimation range [{lo:g}, {hi:g}] Pa; "
                         "they start at the nearest bound (widen estimate.E_range to allow more)")
    rho_range = None
    if est["estimate_density"]:
        rho_range = (float(np.min(p.rho)) / 10.0, float(np.max(p.rho)) * 10.0)
    positions = torch.as_tensor(p.positions, device=device)
    # A start on the range's edge saturates the field's sigmoid (no gradient): start just inside it.
    start_E = np.clip(p.E, lo * 1.05, hi / 1.05)
    init = {"E": torch.as_tensor(start_E, device=device), "nu": torch.as_tensor(p.nu, device=device),
            "rho": torch.as_tensor(p.rho, device=device)}
    lock = torch.as_tensor(p.lock, device=device) if p.lock.any() else None
    return make_field(est["field"], positions, E_range=tuple(est["E_range"]), nu_range=tuple(est["nu_range"]),
                      rho_range=rho_range, init=init, lock=lock).to(device)


def make_differentiable_sim(p: SceneParticles, sim: dict, est: dict, device: str, reporter: Reporter | None = None):
    """The rollout starts from the same rest state under gravity as a bake (solved once with the starting
    materials; each rollout rescales its strain to the candidate E, see DifferentiableSim)."""
    from .mpm import DifferentiableSim

    config = sim_config(sim)
    rest = rest_state(p, sim, config, reporter or Reporter(), device)
    return DifferentiableSim(p.positions, p.material_id, p.anchor, p.cov0, config, device=warp_device(device),
                             bptt_substeps=est["bptt_substeps"], F0=None if rest is None else rest.F, F0_E=p.E)


# --------------------------------------------------------------------------- checkpoints
def save_checkpoint(path: Path, fingerprint: str, field, optimizer, history: list) -> None:
    """Plain arrays + JSON (backend.statefile): a checkpoint can never carry code."""
    state = {"field": field.state_dict(), "optimizer": optimizer.state_dict(), "history": history}
    save_state(path, fingerprint, state)


def load_checkpoint(path: Path, fingerprint: str, field, optimizer, reporter: Reporter):
    """(history, first iteration to run). A checkpoint that is foreign (other settings), unreadable or holds
    NaN is never used: the run starts over and says why. Job folders travel, so the file is untrusted."""
    if not path.exists():
        return [], 0
    before = {k: v.detach().clone() for k, v in field.state_dict().items()}
    try:
        state = load_state(path, fingerprint, as_tensor=torch.from_numpy)
        field.load_state_dict(state["field"])
        optimizer.load_state_dict(state["optimizer"])
        history = [dict(h) for h in state["history"]]
    except (StateRejected, KeyError, TypeError, ValueError, RuntimeError) as exc:
        reason = str(exc) if isinstance(exc, StateRejected) else f"its layout does not fit this field ({exc})"
        reporter.warning(f"Not resuming from {path.name}: {reason}. Starting over")
        field.load_state_dict(before)  # nothing of a rejected file may stay in the field or the optimizer
        optimizer.state.clear()
        return [], 0
    reporter.warning(f"Resuming from iteration {len(history) + 1}")
    return history, len(history)


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


def write_outputs(job, scene: Scene, field, dsim, history, converged, reason, reporter, n_render) -> dict:
    from .report import write_loss_plot, write_preview

    reporter.stage("write", "Writing materials, preview and plot")
    out = job.output_dir
    arrays = materials_for_all_points(field, scene)
    protocol.check_arrays(arrays, protocol.MATERIAL_ARRAYS, protocol.MATERIALS_FILE)
    protocol.atomic_save_npz(out / protocol.MATERIALS_FILE, **arrays)
    with torch.no_grad():
        video = simulate_and_render(dsim, field(), scene, n_render)
    write_preview(video, out / protocol.PREVIEW_FILE, fps=job.simulation["fps"])
    write_loss_plot(history, out / protocol.LOSS_PLOT_FILE)
    summary = {"settings": {"simulation": job.simulation, "estimate": job.estimate}, "history": history,
               "converged": converged, "stop_reason": reason, "iterations": len(history),
               "seconds": float(sum(h["seconds"] for h in history)), **e_percentiles(torch.as_tensor(arrays["youngs_modulus"]))}
    protocol.atomic_write_json(out / protocol.SUMMARY_FILE, summary)
    return {"command": "estimate", "materials": protocol.MATERIALS_FILE, "summary": protocol.SUMMARY_FILE,
            "preview": protocol.PREVIEW_FILE, "loss_plot": protocol.LOSS_PLOT_FILE, "converged": converged,
            "stop_reason": reason, "iterations": len(history), **{k: summary[k] for k in ("E_p5", "E_p50", "E_p95")}}
