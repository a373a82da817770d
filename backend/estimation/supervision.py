"""What judges a rendered video during estimation, behind one ``loss(video, it, total)`` call.

* ``svd`` / ``modelscope``: a video-diffusion prior (MDS or SDS-T) with frame boosting;
* ``analytic``: a closed-form prior whose data is one target clip (tests, the CPU demo's SDS path);
* ``reference``: L2 + SSIM against a reference clip (PhysDreamer's mode).

``check_inputs`` runs before any heavy work, so a missing model or a reference clip that does
not fit the job is reported at once with a precise message.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .. import protocol, render
from ..jobctl import Reporter
from ..prior import ModelUnavailable, PriorConfigError, ReferenceVideoError, check_model, load_prior
from ..prior.analytic import AnalyticPrior
from ..prior.boosting import interleaved_groups
from ..prior.reference_clip import ReferenceVideoLoss, check_fit, load_video, video_info
from .sampling import clip_fps, reference_path

# The job says "sds_t" (the papers' name); backend.prior calls the same loss "sds".
_LOSS_NAMES = {"mds": "mds", "sds_t": "sds"}


def render_size(est: dict) -> tuple[int, int]:
    cam = est["camera"]
    return int(cam["height"]), int(cam["width"])


def check_inputs(est: dict, folder: Path, n_render: int) -> None:
    """Fail fast (BadJob / MissingResource) on inputs that cannot work, before anything heavy loads."""
    kind = est["prior"]
    if kind in protocol.CLIP_PRIORS:
        path = reference_path(est, folder)
        try:
            check_fit(video_info(path), n_render, render_size(est), allow_trim=True, path=path)
        except ReferenceVideoError as exc:
            raise protocol.BadJob(str(exc)) from None
        clip_fps(est, folder)  # compared at the clip's own frame times: they must be known
    else:
        ok, message = check_model(kind, est["model"])
        if not ok:
            raise protocol.MissingResource(message)


class Supervision:
    """Frame boosting over M interleaved groups; each group is judged by ``judges[g]`` (one shared judge
    for the diffusion priors, one per group where the target differs per group)."""

    def __init__(self, judges: list, n_render: int, groups: int, seed: int):
        self.judges = judges
        self.index = interleaved_groups(n_render, groups) if judges[0].kind != "reference" else [list(range(n_render))]
        self.generator = torch.Generator().manual_seed(seed)

    @property
    def kind(self) -> str:
        return self.judges[0].kind

    @property
    def model_fps(self) -> float | None:
        """The frame rate a video model is conditioned on (SVD's fps micro-conditioning), if it has one."""
        fps = getattr(self.judges[0], "fps", None)
        return float(fps) if fps else None

    def loss(self, video: torch.Tensor, it: int, total: int) -> tuple[torch.Tensor, dict]:
        losses, infos = [], []
        for g, idx in enumerate(self.index):
            judge = self.judges[g % len(self.judges)]
            loss, info = judge.loss(video[idx], it, total, self.generator)
            losses.append(loss)
            infos.append(info)
        keys = ("mse", "ssim") if self.kind == "reference" else ("t", "score_rms")
        return torch.stack(losses).mean(), {k: infos[0][k] for k in keys if k in infos[0]}


def make_supervision(est: dict, folder: Path, device: str, n_render: int, scene, reporter: Reporter) -> Supervision:
    kind = est["prior"]
    try:
        if kind == "reference":
            judges = [ReferenceVideoLoss.from_file(reference_path(est, folder), n_render, render_size(est))]
        else:
            judges = _load_judges(kind, est, folder, device, n_render, scene, reporter)
    except ModelUnavailable as exc:
        raise protocol.MissingResource(str(exc)) from None
    except (PriorConfigError, ReferenceVideoError) as exc:
        raise protocol.BadJob(str(exc)) from None
    return Supervision(judges, n_render, int(est["boost_groups"]), int(est["seed"]))


def _load_judges(kind: str, est: dict, folder: Path, device: str, n_render: int, scene, reporter: Reporter) -> list:
    common = dict(loss_type=_LOSS_NAMES[est["loss"]], t_range=tuple(est["t_range"]),
                  anneal_to=est["t_range"][0] if est["anneal_t"] else None)
    if kind == "analytic":
        target = load_video(reference_path(est, folder), n_render, render_size(est))
        # Group g of the rendered frames is judged against the same frames of the target clip.
        return [AnalyticPrior(target[idx], device=device, **common)
                for idx in interleaved_groups(n_render, int(est["boost_groups"]))]
    reporter.stage("load", f"Loading the {kind} video model ({est['model']})")
    opts = dict(common, guidance_scale=float(est["cfg_scale"]), resolution=render_size(est))
    if kind == "modelscope":
        opts.update(prompt=est["prompt"], negative_prompt=est["negative_prompt"])
    prior = load_prior(kind, est["model"], device=device, **opts)
    if kind == "svd":
        prior.prepare(cond_image=first_frame(scene))
    return [prior]


def first_frame(scene) -> torch.Tensor:
    """The rest pose rendered from the first camera: SVD's conditioning image (3, H, W)."""
    p = scene.particles
    n = p.n_visible
    with torch.no_grad():
        out = render.render_splats(torch.as_tensor(p.positions[:n]), colors=scene.colors, opacities=scene.opacities,
                            covars=torch.as_tensor(p.cov0[:n]), camera=scene.cameras[0], background=scene.background)
    return out.rgb.permute(2, 0, 1)
