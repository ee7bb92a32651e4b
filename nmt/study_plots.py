"""The clipping study's pictures: loss per setting, gradient norms over steps, and norm against length."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

from nmt.metrics_log import read_metrics  # noqa: E402
from nmt.outputs import replacing  # noqa: E402

FIGURES = ("loss.png", "grad_norm.png", "norm_vs_length.png")  # what plot_study writes, in its order


def _steps(row: dict) -> list[dict]:
    path = Path(row["run_dir"]) / "metrics.jsonl"
    if not path.exists():
        return []
    return [r for r in read_metrics(path) if "grad_norm" in r and r.get("event") is None]


def _smooth(values: list[float], window: int) -> list[float]:
    out, total, queue = [], 0.0, []
    for value in values:
        queue.append(value)
        total += value
        if len(queue) > window:
            total -= queue.pop(0)
        out.append(total / len(queue))
    return out


def _grid(n: int):
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.8 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    with replacing(path) as partial:
        fig.savefig(partial, dpi=100)
    plt.close(fig)
    return path


def plot_study(rows: list[dict], out: Path) -> list[Path]:
    data = {row["setting"]: _steps(row) for row in rows}
    figures = (_loss_figure, _norms_figure, _norm_vs_length_figure)  # each drawn, saved and closed in turn
    return [_save(draw(rows, data), out / name) for draw, name in zip(figures, FIGURES)]


def _loss_figure(rows: list[dict], data: dict):
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for row in rows:
        steps = [r for r in data[row["setting"]] if r["loss"] is not None]
        if steps:
            ax.plot([r["step"] for r in steps], _smooth([r["loss"] for r in steps], 25), lw=1.4, label=row["setting"])
        if row["diverged"]:
            ax.axvline(row["diverged_at_step"], ls=":", lw=1, color=ax.lines[-1].get_color() if steps else "k")
    bound = min((r["divergence_bound"] for r in rows if r["divergence_bound"] is not None), default=12)
    ax.set_ylim(0, min(bound, 12))
    ax.set(title="Training loss per setting (moving average of 25 steps; dotted: divergence)", xlabel="step",
           ylabel="cross-entropy (nats per target token)")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def _norms_figure(rows: list[dict], data: dict):
    fig, axes = _grid(len(rows))
    for ax, row in zip(axes, rows):
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
    fig.suptitle("Gradient norm before clipping, every step")
    return fig


def _norm_vs_length_figure(rows: list[dict], data: dict):
    fig, axes = _grid(len(rows))
    for ax, row in zip(axes, rows):
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
            slope, intercept, r = _fit(lengths, norms)
            xs = [min(lengths), max(lengths)]
            ax.plot(xs, [intercept + slope * x for x in xs], color="tab:red", lw=2,
                    label=f"least squares: {slope:+.2f} per token, r = {r:.2f}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    fig.suptitle("Gradient norm against target length, second half of each run (past the early transient)")
    return fig


def _fit(xs: list[float], ys: list[float]) -> tuple[float, float, float]:
    """Least-squares line and Pearson correlation."""
    n = len(xs)
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mean_x) ** 2 for x in xs)
    syy = sum((y - mean_y) ** 2 for y in ys)
    sxy = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys))
    slope = sxy / sxx
    return slope, mean_y - slope * mean_x, sxy / math.sqrt(sxx * syy) if syy else 0.0
