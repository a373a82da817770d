"""Human-facing outputs of a run: the preview clip and the loss / stiffness plot."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from ..io.video import write_video
from ..protocol import atomic_write_bytes


def to_uint8_frames(video) -> np.ndarray:
    """(T, 3, H, W) float in [0, 1] (torch or numpy) -> (T, H, W, 3) uint8."""
    v = video.detach().cpu().numpy() if hasattr(video, "detach") else np.asarray(video)
    return (np.clip(v.transpose(0, 2, 3, 1), 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


def write_preview(video, path: Path, fps: float) -> Path:
    return write_video(to_uint8_frames(video), path, fps=fps)


def write_loss_plot(history: list, path: Path, best: int = 0, ladder: dict | None = None) -> Path:
    """Loss and E percentiles per iteration (the best iteration marked), and the ladder's loss along E
    when it ran, as one PNG (written atomically)."""
    import matplotlib  # slow to import, needed only here at the end of an estimate

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 3 if ladder and ladder.get("tries") else 2
    fig, axes = plt.subplots(1, panels, figsize=(4.5 * panels, 3.4), dpi=100)
    ax_loss, ax_e = axes[0], axes[1]
    ok = [h for h in history if np.isfinite(h["loss"])]
    it = [h["iteration"] for h in history]
    ax_loss.plot([h["iteration"] for h in ok], [h["loss"] for h in ok], "o-", color="tab:blue", ms=3)
    ax_loss.set(xlabel="iteration", ylabel="loss", title="Loss")
    ax_loss.set_yscale("log" if ok and all(h["loss"] > 0 for h in ok) else "linear")
    chosen = [h for h in ok if h["iteration"] == best]
    if chosen:
        ax_loss.plot([best], [chosen[0]["loss"]], "*", color="tab:red", ms=12, label=f"best (iteration {best})")
        ax_loss.legend(loc="best", fontsize=8)
    ax_e.fill_between(it, [h["E_p5"] for h in history], [h["E_p95"] for h in history], alpha=0.25,
                      color="tab:orange", label="5-95 %")
    ax_e.plot(it, [h["E_p50"] for h in history], "o-", color="tab:orange", ms=3, label="median")
    ax_e.set(xlabel="iteration", ylabel="Young's modulus E (Pa)", title="Stiffness", yscale="log")
    ax_e.legend(loc="best", fontsize=8)
    if panels == 3:
        _plot_ladder(axes[2], ladder)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return atomic_write_bytes(path, buffer.getvalue())


def _plot_ladder(ax, ladder: dict) -> None:
    """Loss against E for each pass of the ladder (whole object, then each region); failed rungs left out."""
    passes = list(dict.fromkeys(t["pass"] for t in ladder["tries"]))
    for name in passes:
        rows = sorted((t["E"], t["loss"]) for t in ladder["tries"] if t["pass"] == name and t["loss"] is not None)
        if rows:
            ax.plot(*zip(*rows), "o-", ms=3, label="whole object" if name == "all" else name)
    for i, E in enumerate(ladder.get("start_E") or []):
        ax.axvline(E, color="tab:red", lw=0.8, ls="--", label="start" if i == 0 else None)
    ax.set(xlabel="Young's modulus E (Pa)", ylabel="loss", title="Ladder (before the descent)", xscale="log")
    ax.legend(loc="best", fontsize=8)
