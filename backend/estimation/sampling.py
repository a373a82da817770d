"""When estimation looks at the motion: the supervision's own frame times, apart from the timeline.

The scene's frame rate is the bake's business. Estimation renders the rest frame and then one frame
every 1/fps seconds at the rate its supervision was made at, and the simulation between two of
those frames takes as many CFL substeps as it needs:

* a reference clip (or the analytic prior's target clip) is compared at its own frame times: its
  rate is ``estimate.reference_fps`` when given, else the rate the file carries (an MP4's stream
  rate, a GIF's frame time, a frame folder's ``frame_rate.json``); a bare folder of frames has none,
  and the job says so instead of guessing;
* SVD judges clips at the frame rate it is conditioned on (its ``fps`` micro-conditioning);
* ModelScope has no frame-rate conditioning: it sees the motion at the scene's frame rate.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .. import protocol
from ..io.video import FRAME_RATE_FILE, VideoError, video_fps

@dataclass(frozen=True)
class Sampling:
    fps: float  # rendered frames per second of simulated time
    n_frames: int  # the rest frame, then n_frames - 1 simulated frames
    source: str  # where the rate comes from, in words

    @property
    def duration(self) -> float:
        return (self.n_frames - 1) / self.fps

    def describe(self) -> str:
        return (f"{self.n_frames} frames at {self.fps:g} fps ({self.duration:.3g} s of motion), "
                f"the rate of {self.source}")


def reference_path(est: dict, folder: Path) -> str:
    """The reference clip the job names, relative to the job folder unless absolute."""
    p = Path(str(est["reference_video"]))
    return str(p if p.is_absolute() else folder / p)


def clip_fps(est: dict, folder: Path) -> tuple[float, str]:
    """The reference clip's frame rate and where it came from; BadJob when nothing says it."""
    if est.get("reference_fps"):
        return float(est["reference_fps"]), "the reference clip (estimate.reference_fps)"
    path = reference_path(est, folder)
    try:
        fps = video_fps(path)
    except VideoError as exc:
        raise protocol.BadJob(str(exc)) from None
    if fps is None:
        raise protocol.BadJob(
            f"the reference clip '{path}' does not say its frame rate (a folder of frames without "
            f"{FRAME_RATE_FILE}, or a single image); give it as estimate.reference_fps (frames per second) "
            "so the motion is compared at the clip's own frame times")
    return fps, "the reference clip (read from the file)"


def estimation_sampling(est: dict, sim: dict, folder: Path, prior_fps: float | None = None) -> Sampling:
    """The frame times estimation renders at (see the module doc). prior_fps: a loaded prior's own rate
    (default: protocol.PRIOR_FPS, the rate it is conditioned on unless told otherwise)."""
    n = int(est["frames_per_group"]) * int(est["boost_groups"])
    prior = est["prior"]
    if prior in protocol.CLIP_PRIORS:
        clip, source = clip_fps(est, folder)
        return Sampling(protocol.sampling_fps(prior, sim["fps"], clip_fps=clip), n, source)
    fps = protocol.sampling_fps(prior, sim["fps"], model_fps=prior_fps)
    if prior_fps or prior in protocol.PRIOR_FPS:
        return Sampling(fps, n, f"the {prior} model's frame-rate conditioning")
    return Sampling(fps, n, "the scene (the video model has no frame-rate conditioning)")


def sampling_simulation(sim: dict, sampling: Sampling) -> dict:
    """The simulation settings estimation runs with: the scene's, with frames at the sampling rate."""
    return protocol.sampled_simulation(sim, sampling.fps, sampling.n_frames)
