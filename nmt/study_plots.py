"""The clipping study's pictures: loss per setting, gradient norms over steps, and norm against length."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from matplotlib.ticker import FuncFormatter

from nmt.plot import plt, save_figure  # pyplot, on the Agg backend nmt.plot selects
from nmt.study import logged

FIGURES = ("loss.png", "grad_norm.png", "norm_vs_length.png")  # what plot_study writes, in its order


def _grid(rows: list[dict], title: str):
    cols = min(3, len(rows))
    lines = math.ceil(len(rows) / cols)
    fig, axes = plt.subplots(lines, cols, figsize=(5 * cols, 3.8 * lines), squeeze=False)
    for ax in axes.flat[len(rows):]:
        ax.set_visible(False)
    fig.suptitle(title)
    return fig, zip(axes.flat, rows)


def plot_study(rows: list[dict], out: Path) -> list[Path]:
    data = {row["setting"]: logged(Path(row["run_dir"]))[1] for row in rows}
    figures = (_loss_figure, _norms_figure, _norm_vs_length_figure)  # each drawn, saved and closed in turn
    return [save_figure(draw(rows, data), out / name, dpi=100) for draw, name in zip(figures, FIGURES)]


def _loss_figure(rows: list[dict], data: dict):
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for row in rows:
        steps = [r for r in data[row["setting"]] if r["loss"] is not None]
        if steps:  # each loss's mean with the 24 before it (fewer at the start), as the divergence test takes it
            losses = [r["loss"] for r in steps]
            smooth = [sum(losses[max(0, i - 24):i + 1]) / min(i + 1, 25) for i in range(len(losses))]
            ax.plot([r["step"] for r in steps], smooth, lw=1.4, label=row["setting"])
        if row["diverged"]:
            ax.axvline(row["diverged_at_step"], ls=":", lw=1, color=ax.lines[-1].get_color() if steps else "k")
    ax.set_ylim(0, min([12] + [r["divergence_bound"] for r in rows if r["divergence_bound"] is not None]))
    ax.set(title="Training loss per setting (moving average of 25 steps; dotted: divergence)", xlabel="step",
           ylabel="cross-entropy (nats per target token)")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def _norms_figure(rows: list[dict], data: dict):
    fig, panels = _grid(rows, "Gradient norm before clipping, every step")
    for ax, row in panels:
        steps = [r for r in data[row["setting"]] if r["grad_norm"]]
        ax.scatter([r["step"] for r in steps], [r["grad_norm"] for r in steps], s=3, alpha=0.5,
                   c=["tab:red" if r["clipped"] else "tab:blue" for r in steps])
        threshold = row["max_grad_norm"]
        if threshold is not None:
            ax.axhline(threshold, color="black", ls="--", lw=1.2, label=f"threshold {threshold:g} (red: clipped)")
        else:
            ax.axhline(5.0, color="gray", ls=":", lw=1.2, label="5 (not applied: no clipping)")
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda value, _: f"{value:g}" if f"{value:g}"[0] in "25" else ""))
        ax.set(title=row["setting"], xlabel="step", ylabel="pre-clip gradient L2 norm (log)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8, loc="upper right")
    return fig


def _norm_vs_length_figure(rows: list[dict], data: dict):
    fig, panels = _grid(rows, "Gradient norm against target length, second half of each run (past the early transient)")
    for ax, row in panels:
        steps = data[row["setting"]]
        if row["diverged"]:
            steps = [r for r in steps if r["step"] < row["diverged_at_step"]]
        steps = [r for r in steps[len(steps) // 2:] if r["grad_norm"] and r.get("batch_sentences")]
        ax.set(title=row["setting"], xlabel="mean target length in the batch (pieces + EOS)",
               ylabel="pre-clip gradient L2 norm")
        if len(steps) < 10:  # too few to show a trend
            why = f"diverged at step {row['diverged_at_step']}" if row["diverged"] else "no logged steps"
            ax.text(0.5, 0.5, f"{why}:\nno stable steps to show", transform=ax.transAxes, ha="center", va="center")
            continue
        lengths = [r["batch_tokens"] / r["batch_sentences"] for r in steps]
        norms = [r["grad_norm"] for r in steps]
        ax.scatter(lengths, norms, s=4, alpha=0.4, color="tab:blue", label="one batch")
        if max(lengths) > min(lengths):
            slope, intercept = statistics.linear_regression(lengths, norms)
            r = statistics.correlation(lengths, norms) if max(norms) > min(norms) else 0.0
            xs = [min(lengths), max(lengths)]
            ax.plot(xs, [intercept + slope * x for x in xs], color="tab:red", lw=2,
                    label=f"least squares: {slope:+.2f} per token, r = {r:.2f}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    return fig
