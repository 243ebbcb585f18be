"""Pure plotting functions: numpy arrays in, a matplotlib Figure out.

No training state, no pyplot (`matplotlib.figure.Figure`: nothing accumulates over a long run). Every
figure has a fixed size in inches at `DPI`, so a saved PNG has a predictable size in pixels.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

DPI = 100
CURVE_PANELS = (  # (title, y label, tags, log y)
    ("losses", "loss", ("loss/d", "loss/g"), False),
    ("discriminator accuracy", "accuracy", ("d/acc_real", "d/acc_fake", "d/acc"), False),
    ("gradient norms", "‖∇‖₂", ("grad/g_norm", "grad/d_norm"), True),
)
CURVES_SIZE = (15.0, 4.0)     # inches: 1500 x 400 px
SQUARE_PANEL = 4.0            # inches per scatter / feature-space panel
PROGRESSION_CELL = 0.5        # inches per sample in the progression strip


def save_png(fig: Figure, path: str | Path) -> Path:
    """Write `fig` at its own size: width x height inches x DPI pixels."""
    from ganexp.io import writes
    return writes.replace_with(path, lambda tmp: fig.savefig(tmp, dpi=fig.dpi))


def curves_figure(epochs: Sequence[float], series: Mapping[str, Sequence[float]]) -> Figure:
    """The instance_noise recipe's training curves: losses, D accuracy and gradient norms; `epochs[i]` is the
    x value of `series[tag][i]`, and tags missing from `series` are left out."""
    fig = Figure(figsize=CURVES_SIZE, dpi=DPI, layout="constrained")
    axes = fig.subplots(1, len(CURVE_PANELS))
    x = np.asarray(epochs, dtype=float)
    for ax, (title, ylabel, tags, log) in zip(axes, CURVE_PANELS):
        for tag in tags:
            if tag in series:
                ax.plot(x, np.asarray(series[tag], dtype=float), lw=1.2, label=tag)
        if log and ax.lines:
            ax.set_yscale("log")
        if title.startswith("discriminator"):
            ax.axhline(0.5, color="grey", lw=0.8, ls="--")  # chance: D cannot tell real from fake
            ax.set_ylim(-0.02, 1.02)
        ax.set(title=title, xlabel="epoch", ylabel=ylabel)
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend(loc="best", fontsize="small")
    return fig


def progression_figure(rows: Sequence[np.ndarray], labels: Sequence[str]) -> Figure:
    """The instance_noise recipe's image progression: row i shows `rows[i]` (uint8 [n, C, H, W]) labelled `labels[i]`;
    a column follows one z through training."""
    n, c, h, w = rows[0].shape
    mosaic = np.concatenate([np.concatenate(list(row), axis=2) for row in rows], axis=1)  # [C, rows*H, n*W]
    cell = PROGRESSION_CELL
    fig = Figure(figsize=((n + 1.5) * cell, (len(rows) + 0.5) * cell), dpi=DPI)
    ax = fig.add_axes((1.5 / (n + 1.5), 0.25 / (len(rows) + 0.5), n / (n + 1.5), len(rows) / (len(rows) + 0.5)))
    if c == 1:
        ax.imshow(mosaic[0], cmap="gray", vmin=0, vmax=255, interpolation="nearest", aspect="auto")
    else:
        ax.imshow(mosaic.transpose(1, 2, 0), interpolation="nearest", aspect="auto")
    ax.set_yticks([(i + 0.5) * h for i in range(len(rows))], list(labels), fontsize=8)
    ax.set_xticks([])
    return fig


def bounds(*points: np.ndarray, margin: float = 0.1) -> tuple[float, float, float, float]:
    """(x_min, x_max, y_min, y_max) around all `points` ([n, 2] each), widened by `margin` of the span."""
    allp = np.concatenate([np.asarray(p, dtype=float).reshape(-1, 2) for p in points])
    lo, hi = allp.min(0), allp.max(0)
    pad = np.maximum((hi - lo) * margin, 1e-6)
    return lo[0] - pad[0], hi[0] + pad[0], lo[1] - pad[1], hi[1] + pad[1]


def scatter_panels_figure(real: np.ndarray, snapshots: Sequence[tuple[str, np.ndarray]]) -> Figure:
    """The toy_quadratic recipe's real vs generated points over training: one panel per (title, generated [n, 2])."""
    fig = Figure(figsize=(SQUARE_PANEL * len(snapshots), SQUARE_PANEL), dpi=DPI, layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(snapshots), sharex=True, sharey=True))
    x0, x1, y0, y1 = bounds(real, *(fake for _, fake in snapshots))
    for ax, (title, fake) in zip(axes, snapshots):
        ax.scatter(real[:, 0], real[:, 1], s=3, alpha=0.4, label="real")
        ax.scatter(fake[:, 0], fake[:, 1], s=3, alpha=0.4, label="generated")
        ax.set(title=title, xlim=(x0, x1), ylim=(y0, y1))
    axes[0].legend(loc="upper center", fontsize="small", markerscale=3)
    return fig


class ScatterSnapshots:
    """scatter_panels_figure's one-panel form for a run's periodic snapshots, as CHW RGB (`image()`). The axes
    keep their limits while the points fit them and fill half of each axis, so snapshots compare at one scale;
    the background (frame, real points, legend) is drawn once per limits, each snapshot blitted over it."""

    def __init__(self, real: np.ndarray):
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        self.real = np.asarray(real, dtype=float)
        self.fig = Figure(figsize=(SQUARE_PANEL, SQUARE_PANEL), dpi=DPI)
        self.fig.subplots_adjust(left=0.12, right=0.97, bottom=0.08, top=0.93)  # fixed: no layout pass per draw
        self.canvas = FigureCanvasAgg(self.fig)
        self.ax = self.fig.subplots()
        self.ax.scatter(self.real[:, 0], self.real[:, 1], s=3, alpha=0.4, label="real")
        self.fake = self.ax.scatter(self.real[:0, 0], self.real[:0, 1], s=3, alpha=0.4, label="generated")
        self.ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncols=2, frameon=False, borderaxespad=0.2,
                       fontsize="small", markerscale=3, handletextpad=0.1, columnspacing=0.8)
        self.title = self.ax.set_title("", loc="left")
        self.limits: tuple[float, float, float, float] | None = None
        self.background = None

    def image(self, title: str, fake: np.ndarray) -> np.ndarray:
        fake = np.asarray(fake, dtype=float)
        wanted, lo, hi, old = bounds(self.real, fake), fake.min(0), fake.max(0), self.limits
        # new limits unless every point lies within the old ones and its own limits span half of each axis or more
        if old is None or not all(old[2 * i] <= lo[i] and hi[i] <= old[2 * i + 1] and
                                  wanted[2 * i + 1] - wanted[2 * i] >= 0.5 * (old[2 * i + 1] - old[2 * i])
                                  for i in (0, 1)):
            self.limits = wanted
            self.ax.set(xlim=wanted[:2], ylim=wanted[2:])
            self.title.set_text("")
            self.fake.set_visible(False)
            self.canvas.draw()
            self.background = self.canvas.copy_from_bbox(self.fig.bbox)
            self.fake.set_visible(True)
        self.canvas.restore_region(self.background)
        self.fake.set_offsets(fake)
        self.title.set_text(title)
        for artist in (self.fake, self.title):  # in the order a full draw stacks them
            self.ax.draw_artist(artist)
        return np.asarray(self.canvas.buffer_rgba())[..., :3].transpose(2, 0, 1).copy()


def decision_surface_figure(xs: np.ndarray, ys: np.ndarray, prob: np.ndarray, real: np.ndarray,
                            fake: np.ndarray, title: str = "") -> Figure:
    """D(x) = σ(logit) on the grid xs × ys (`prob` is [len(ys), len(xs)]) as a heatmap, points on top."""
    fig = Figure(figsize=(SQUARE_PANEL * 1.25, SQUARE_PANEL), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    mesh = ax.pcolormesh(xs, ys, prob, cmap="RdBu_r", vmin=0.0, vmax=1.0, shading="auto")
    fig.colorbar(mesh, ax=ax, label="D(x): probability real")
    ax.scatter(real[:, 0], real[:, 1], s=3, c="k", alpha=0.5, label="real")
    ax.scatter(fake[:, 0], fake[:, 1], s=3, c="gold", alpha=0.6, label="generated")
    ax.set(title=title, xlim=(xs[0], xs[-1]), ylim=(ys[0], ys[-1]))
    ax.legend(loc="upper center", fontsize="small", markerscale=3)
    return fig


def feature_space_figure(panels: Sequence[dict]) -> Figure:
    """The toy_quadratic recipe's "effect of one generator update" in D's 2-d feature space, one panel per dict:
    `real`, `fake_before`, `fake_after` (features [n, 2]), `title`, and optionally `surface` = (xs, ys, prob),
    σ(head(f)) on a grid of feature space (2-d features: ToyFigures.setup checks D's feature layer). The arrow shows
    how the generated centroid moved."""
    fig = Figure(figsize=(SQUARE_PANEL * len(panels), SQUARE_PANEL), dpi=DPI, layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, panel in zip(axes, panels):
        real, before, after = (np.asarray(panel[k], dtype=float) for k in ("real", "fake_before", "fake_after"))
        if panel.get("surface") is not None:
            xs, ys, prob = panel["surface"]
            ax.pcolormesh(xs, ys, prob, cmap="RdBu_r", vmin=0.0, vmax=1.0, shading="auto", alpha=0.6)
        for points, color, alpha, marker, label in ((real, "tab:blue", 0.4, "o", "real"),
                                                    (before, "tab:orange", 0.3, "X", "generated, before G step"),
                                                    (after, "tab:green", 0.3, "X", "generated, after G step")):
            ax.scatter(points[:, 0], points[:, 1], s=3, alpha=alpha, c=color, label=label)
            ax.scatter(*points.mean(0), s=160, c=color, marker=marker, edgecolors="k", linewidths=1.2, zorder=5)
        ax.annotate("", xy=after.mean(0), xytext=before.mean(0), zorder=6,
                    arrowprops=dict(arrowstyle="->", color="k", lw=1.5))
        x0, x1, y0, y1 = bounds(real, before, after)
        ax.set(title=panel.get("title", ""), xlim=(x0, x1), ylim=(y0, y1), xlabel="feature 1", ylabel="feature 2")
    axes[0].legend(loc="upper center", fontsize="x-small", markerscale=3)
    return fig
