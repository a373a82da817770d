"""Human-facing outputs of a run: the preview clip and the loss / stiffness plot."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def to_uint8_frames(video) -> np.ndarray:
    """(T, 3, H, W) float in [0, 1] (torch or numpy) -> (T, H, W, 3) uint8."""
    v = video.detach().cpu().numpy() if hasattr(video, "detach") else np.asarray(video)
    return (np.clip(v.transpose(0, 2, 3, 1), 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


def write_preview(video, path: Path, fps: float) -> Path:
    from .io.video import write_video

    return write_video(to_uint8_frames(video), path, fps=fps)


def write_loss_plot(history: list, path: Path) -> Path:
    """Loss and E percentiles per iteration, as one PNG (written atomically)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .protocol import atomic_write_bytes

    it = [h["iteration"] for h in history]
    fig, (ax_loss, ax_e) = plt.subplots(1, 2, figsize=(9, 3.4), dpi=100)
    ax_loss.plot(it, [h["loss"] for h in history], "o-", color="tab:blue", ms=3)
    ax_loss.set(xlabel="iteration", ylabel="loss", title="Loss")
    ax_loss.set_yscale("log" if all(h["loss"] > 0 for h in history) and history else "linear")
    ax_e.fill_between(it, [h["E_p5"] for h in history], [h["E_p95"] for h in history], alpha=0.25,
                      color="tab:orange", label="5-95 %")
    ax_e.plot(it, [h["E_p50"] for h in history], "o-", color="tab:orange", ms=3, label="median")
    ax_e.set(xlabel="iteration", ylabel="Young's modulus E (Pa)", title="Stiffness", yscale="log")
    ax_e.legend(loc="best", fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return atomic_write_bytes(path, buffer.getvalue())
