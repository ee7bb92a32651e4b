"""Pictures: a run's training curves, and attention heatmaps."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from nmt.config import load_config  # noqa: E402
from nmt.errors import NMTError  # noqa: E402
from nmt.metrics_log import read_metrics  # noqa: E402
from nmt.outputs import check_output, replacing  # noqa: E402


def plot_run(run_dir: Path, out: Path | None = None, overwrite: bool = False) -> Path:
    """Loss, validation BLEU, learning rate and pre-clip gradient norm against steps, in one PNG."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        raise NMTError(f"{path}: not found; is {run_dir} a run directory?")
    out = check_output(out or run_dir / "curves.png", reads=[path], flag="--out", overwrite=overwrite)
    image_format = out.suffix[1:].lower() or "png"
    if image_format not in {"png", "svg", "pdf", "jpg", "jpeg"}:
        raise NMTError(f"--out {out}: ends in .{image_format}; give a .png, .svg, .pdf or .jpg file")
    records = read_metrics(path)
    steps = [r for r in records if "loss" in r and r.get("event") is None and r["loss"] is not None]
    valid = [r for r in records if "valid_loss" in r]
    if not steps and not valid:
        raise NMTError(f"{path}: no logged steps yet")
    config = run_dir / "config.yaml"
    threshold = load_config(config).train.max_grad_norm if config.exists() else None
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    fig.suptitle(f"Training curves: {run_dir.name}")
    loss_ax, bleu_ax, lr_ax, norm_ax = axes.flat
    loss_ax.plot([r["step"] for r in steps], [r["loss"] for r in steps], label="train (per token)", lw=1)
    if valid:
        loss_ax.plot([r["step"] for r in valid], [r["valid_loss"] for r in valid], "o-", label="validation (per token)")
        bleu_ax.plot([r["step"] for r in valid], [r["valid_bleu"] for r in valid], "o-", color="tab:green")
    lr_ax.plot([r["step"] for r in steps], [r["lr"] for r in steps], color="tab:purple")
    norms = [(r["step"], r["grad_norm"], r.get("clipped")) for r in steps if r.get("grad_norm")]
    if norms:
        norm_ax.plot([s for s, _, _ in norms], [n for _, n, _ in norms], lw=1, label="pre-clip norm")
        clipped = [(s, n) for s, n, c in norms if c]
        if clipped:
            norm_ax.scatter(*zip(*clipped), s=10, color="tab:red", zorder=3, label="clipped step")
    if threshold is not None:
        norm_ax.axhline(threshold, color="black", ls="--", label=f"threshold {threshold:g}")
    norm_ax.set_yscale("log")
    norm_ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}"))
    panels = (("Loss", "cross-entropy (nats per target token)"), ("Validation BLEU (greedy)", "BLEU"),
              ("Learning rate", "learning rate"), ("Gradient norm before clipping", "L2 norm (log scale)"))
    for ax, (title, ylabel) in zip(axes.flat, panels):
        ax.set(title=title, xlabel="step", ylabel=ylabel)
        ax.grid(alpha=0.3, which="both")  # minor lines where there are minor ticks: on the log scale
    loss_ax.legend()
    norm_ax.legend()
    return save_figure(fig, out, dpi=110, format=image_format)


def plot_attention(weights, src_pieces: list[str], tgt_pieces: list[str], out: Path, title: str = "") -> None:
    """weights: (target steps, source positions); source along x, target down y."""
    weights = weights[: len(tgt_pieces), : len(src_pieces)].float().numpy()
    fig, ax = plt.subplots(figsize=(max(5.0, 0.42 * len(src_pieces) + 2.5), max(4.0, 0.36 * len(tgt_pieces) + 2.0)))
    image = ax.imshow(weights, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(src_pieces)), src_pieces, rotation=60, ha="right", fontsize=10)
    ax.set_yticks(range(len(tgt_pieces)), tgt_pieces, fontsize=10)
    ax.set(xlabel="source pieces", ylabel="target pieces", title=f"Attention weights {title}".strip())
    fig.colorbar(image, ax=ax, fraction=0.03, label="weight")
    save_figure(fig, out, dpi=100)


def save_figure(fig, path: Path, **savefig) -> Path:
    """Lay `fig` out, write it whole as nmt's output `path` and close it."""
    fig.tight_layout()
    with replacing(path) as partial:
        fig.savefig(partial, **savefig)
    plt.close(fig)
    return path
