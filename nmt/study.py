"""`nmt study clipping`: the same model, data and seed under several optimizer and clipping settings.

Each setting trains for the same wall-clock budget with a constant learning rate and logs every step, so the study
can show the pre-clip gradient norm of every batch against that batch's target length. A setting diverges at the
first step whose loss is not finite, or where the moving average of the per-token training loss over
DIVERGENCE_WINDOW steps exceeds DIVERGENCE_FACTOR x the first step's loss (at initialisation about ln(vocabulary),
the loss of uniform guessing; the brief spikes of a healthy SGD run stay well below it). It is recorded as diverged
at that step, and the study goes on with the next setting."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

from nmt.config import load_config
from nmt.device import resolve_device, resolve_precision
from nmt.errors import Diverged, NMTError
from nmt.metrics_log import read_metrics
from nmt.outputs import check_output, check_output_folder, write_text

log = logging.getLogger(__name__)

DIVERGENCE_FACTOR = 2.0
DIVERGENCE_WINDOW = 25


@dataclass
class Setting:
    name: str
    optimizer: str
    lr: float
    max_grad_norm: float | None


DEFAULT_SETTINGS = [
    Setting("sgd lr 1.0, clip 5", "sgd", 1.0, 5.0),
    Setting("sgd lr 1.0, no clip", "sgd", 1.0, None),
    Setting("sgd lr 0.1, no clip", "sgd", 0.1, None),
    # the largest unclipped rate found not to diverge on Multi30k (0.05 diverged): stable, but slow
    Setting("sgd lr 0.03, no clip", "sgd", 0.03, None),
    Setting("adam lr 1e-3, no clip", "adam", 1e-3, None),
    Setting("adam lr 1e-3, clip 5", "adam", 1e-3, 5.0),
]


def parse_setting(text: str) -> Setting:
    """`OPTIMIZER:LR:CLIP`, CLIP a number or `none`: `sgd:2.0:5`, `adam:3e-4:none`."""
    try:
        optimizer, lr, clip = text.split(":")
        max_grad_norm = None if clip.lower() in ("none", "null", "off") else float(clip)
        rate = float(lr)
    except ValueError:
        raise NMTError(f"--add {text}: expected OPTIMIZER:LR:CLIP, e.g. sgd:2.0:5 or adam:1e-3:none") from None
    if optimizer not in ("sgd", "adam"):
        raise NMTError(f"--add {text}: optimizer must be sgd or adam")
    clip_name = "no clip" if max_grad_norm is None else f"clip {max_grad_norm:g}"
    return Setting(f"{optimizer} lr {lr}, {clip_name}", optimizer, rate, max_grad_norm)


def choose_settings(args) -> list[Setting]:
    wrong = [i for i in args.only or [] if not 1 <= i <= len(DEFAULT_SETTINGS)]
    if wrong:
        raise NMTError(f"--only {wrong[0]}: the default settings are numbered 1 to {len(DEFAULT_SETTINGS)}")
    settings = DEFAULT_SETTINGS if not args.only else [DEFAULT_SETTINGS[i - 1] for i in args.only]
    settings = list(settings) + [parse_setting(text) for text in args.add]
    settings += [Setting(f"sgd lr 1.0, clip {t:g}", "sgd", 1.0, t) for t in args.max_grad_norm]
    names = [s.name for s in settings]
    if not settings or len(set(names)) != len(names):
        raise NMTError("the study needs at least one setting, each named once")
    return settings


def slug(name: str) -> str:
    return "".join(c if c.isalnum() or c == "." else "_" for c in name).strip("_")


def setting_overrides(setting: Setting, args) -> list[str]:
    clip = "null" if setting.max_grad_norm is None else repr(setting.max_grad_norm)
    return [*args.overrides, f"train.optimizer={setting.optimizer}", f"train.lr={setting.lr!r}",
            f"train.max_grad_norm={clip}", f"train.max_minutes={args.minutes}", "train.log_every=1",
            "train.lr_schedule=none", "train.patience=null", "data.test_split=null"]


def logged(run_dir: Path) -> tuple[list[dict], list[dict]]:
    """A setting's metrics records (none where it stopped before writing any), and those of its steps."""
    records = read_metrics(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").exists() else []
    return records, [r for r in records if "grad_norm" in r and r.get("event") is None]


def summarize(setting: Setting, run_dir: Path, error: str | None) -> dict:
    records, steps = logged(run_dir)
    valid = [r for r in records if "valid_ppl" in r]
    diverged_at, bound = divergence(records)
    norms = [r["grad_norm"] for r in steps if r["grad_norm"] is not None]
    return {
        "setting": setting.name, "optimizer": setting.optimizer, "lr": setting.lr,
        "max_grad_norm": setting.max_grad_norm, "steps": max((r["step"] for r in records), default=0),
        "valid_ppl": valid[-1]["valid_ppl"] if valid and diverged_at is None else None,
        "valid_bleu": valid[-1]["valid_bleu"] if valid and diverged_at is None else None,
        "clipped_fraction": sum(bool(r["clipped"]) for r in steps) / len(steps) if steps else 0.0,
        "max_grad_norm_seen": max(norms) if norms else None,
        "diverged": diverged_at is not None, "diverged_at_step": diverged_at,
        "divergence_bound": round(bound, 2) if math.isfinite(bound) else None,  # JSON has no infinity
        "error": error, "run_dir": str(run_dir),
    }


def divergence(records: list[dict]) -> tuple[int | None, float]:
    """(first diverged step or None, the loss bound used)."""
    losses = [r for r in records if r.get("event") == "non_finite" or "loss" in r]
    first = next((r["loss"] for r in losses if r.get("loss") is not None), None)
    bound = DIVERGENCE_FACTOR * first if first is not None else math.inf
    window: list[float] = []
    for record in losses:
        if record.get("event") == "non_finite" or record.get("loss") is None:
            return record["step"], bound
        window = (window + [record["loss"]])[-DIVERGENCE_WINDOW:]
        if sum(window) / len(window) > bound:
            return record["step"], bound
    return None, bound


def markdown_table(rows: list[dict]) -> str:
    lines = ["| setting | steps | valid ppl | valid BLEU | steps clipped | largest grad norm | diverged |",
             "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]

    def fmt(value, spec):
        return "—" if value is None else format(value, spec)

    for r in rows:
        diverged = f"yes, at step {r['diverged_at_step']}" if r["diverged"] else "no"
        lines.append(f"| {r['setting']} | {r['steps']} | {fmt(r['valid_ppl'], '.2f')} | {fmt(r['valid_bleu'], '.2f')} "
                     f"| {100 * r['clipped_fraction']:.0f}% | {fmt(r['max_grad_norm_seen'], ',.1f')} | {diverged} |")
    return "\n".join(lines) + "\n"


def run_study(args) -> tuple[str, list[Path]]:
    """Train every setting, then write study.md, study.json and the pictures; returns the table and them."""
    from nmt.experiment import train_and_test
    from nmt.study_plots import FIGURES, plot_study

    settings = choose_settings(args)
    # bad settings, a precision this CPU lacks: before anything is written
    cfg = load_config(args.config, args.overrides)
    for setting in settings:
        try:
            load_config(args.config, setting_overrides(setting, args))
        except NMTError as error:  # its values reach the config as overrides, but the user gave a setting
            raise NMTError(f"setting '{setting.name}': {str(error).removeprefix('--set: ')}") from None
    resolve_precision(cfg.train.precision, resolve_device(cfg.train.device))
    out = check_output_folder(args.out, flag="--out")
    if (out / "study.json").exists():
        raise NMTError(f"{out} already holds a study; choose another --out")
    for name in ("study.md", "study.json", *FIGURES):
        check_output(out / name, flag="--out", folder_checked=True, overwrite=args.overwrite)
    earlier = [slug(setting.name) for setting in settings if (out / slug(setting.name)).exists()]
    if earlier:  # an interrupted study's: its runs would be summarised as this one's
        raise NMTError(f"{out} holds runs of an earlier study ({', '.join(earlier)}); choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for index, setting in enumerate(settings, 1):
        log.info("== setting %d/%d: %s, %.1f minutes", index, len(settings), setting.name, args.minutes)
        run_dir, error = out / slug(setting.name), None
        try:
            train_and_test(args.config, setting_overrides(setting, args), str(run_dir))
        except Diverged as failure:  # too many non-finite steps in a row: recorded (any other error stops the study)
            error = str(failure)
            log.warning("%s: %s", setting.name, error)
        rows.append(summarize(setting, run_dir, error))
    table = markdown_table(rows)
    write_text(out / "study.md",
        f"Clipping study: `{args.config}`, {args.minutes:g} minutes per setting, constant learning rate. "
        f"Diverged = a non-finite loss, or a {DIVERGENCE_WINDOW}-step moving average of the per-token training loss "
        f"above {DIVERGENCE_FACTOR:g} x the first step's loss.\n\n{table}")
    write_text(out / "study.json", json.dumps(rows, indent=2) + "\n")
    return table, plot_study(rows, out)
