"""Atomic checkpoints that rebuild their model, tokenizer and config on their own, and what one carries.

A checkpoint is written whole and synced before it replaces the old one (`cache.written_whole`), so a crash,
a power cut or a full disk leaves the previous checkpoint intact. Everything in it is a tensor or a plain
type, so it loads with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import io
import logging
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from nmt.cache import written_whole
from nmt.config import Config, config_from_dict
from nmt.errors import NMTError
from nmt.model import Seq2Seq
from nmt.tokenizer import Tokenizer

log = logging.getLogger(__name__)

FORMAT = "nmt-checkpoint"
VERSION = 1


@dataclass
class Progress:
    """Counters that a checkpoint carries so that a resumed run continues the same run."""

    step: int = 0
    epoch: int = 1
    batch_in_epoch: int = 0  # batches of `epoch` already trained on
    elapsed: float = 0.0  # seconds of training wall clock, summed over resumes
    best_bleu: float = -1.0
    validations_without_improvement: int = 0
    validated_step: int = -1
    consecutive_bad_steps: int = 0
    bad_steps: int = 0
    oom_batches: int = 0
    clipped_in_epoch: int = 0
    steps_in_epoch: int = 0
    summarized_epoch: int = 0  # the last epoch whose end was logged (a signal may land after it)


def training_payload(trainer) -> dict:
    """What `--resume` needs to continue a `Trainer`'s run bit for bit (`restore_training`), and what
    inference needs: the model, its config and its tokenizer."""
    rng = {"torch": torch.get_rng_state()}
    if trainer.device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(trainer.device)
    return {"model": trainer.model.state_dict(), "optimizer": trainer.optimizer.state_dict(),
            "schedule": trainer.schedule.state_dict(), "scaler": trainer.scaler and trainer.scaler.state_dict(),
            "progress": asdict(trainer.progress), "rng": rng, "config": trainer.cfg.to_dict(),
            "tokenizer": trainer.tokenizer.state_dict(), "computed_by": trainer.computed_by}


def restore_training(trainer, payload: dict) -> Progress:
    """Load `training_payload`'s state into a new `Trainer` of the same config; returns the run's progress."""
    for part in ("model", "optimizer", "schedule"):
        getattr(trainer, part).load_state_dict(payload[part])
    if trainer.scaler and payload.get("scaler"):
        trainer.scaler.load_state_dict(payload["scaler"])
    torch.set_rng_state(payload["rng"]["torch"])
    if "cuda" in payload["rng"] and trainer.device.type == "cuda":
        torch.cuda.set_rng_state(payload["rng"]["cuda"], trainer.device)
    progress = Progress(**payload["progress"])
    if payload.get("computed_by", trainer.computed_by) != trainer.computed_by:
        log.warning("this run trained with %s and resumes with %s: it continues, but not bit for bit as it "
                    "would have on the first machine", payload["computed_by"], trainer.computed_by)
    log.info("continuing epoch %d after its first %d batches", progress.epoch, progress.batch_in_epoch)
    return progress


def save(payload: dict, path: Path) -> None:
    """Write atomically; on failure the previous file at `path` is untouched and NMTError is raised."""
    buffer = io.BytesIO()  # serialized first: a full disk is then an OSError of Python's own write
    torch.save({"format": FORMAT, "version": VERSION, **payload}, buffer)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with written_whole(path, durable=True, keep_suffix=False) as partial:
            partial.write_bytes(buffer.getbuffer())
    except OSError as error:
        raise NMTError(f"{path}: could not save the checkpoint ({error.strerror or error}); the previous "
                       "checkpoint is intact; free disk space or fix the folder's permissions, then resume with "
                       "--resume") from None


def load(path: Path, needs: tuple[str, ...] = ()) -> dict:
    if not path.is_file():
        raise NMTError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load raises many types on a file that is not a checkpoint
        if isinstance(error, PermissionError):
            raise NMTError(f"{path}: cannot read it (permission denied)") from None
        if not zipfile.is_zipfile(path):  # what torch.save writes
            reason = "truncated, or not a checkpoint at all"
        elif "Weights only load failed" in str(error):
            reason = "it holds Python objects, which nmt's checkpoints never do"
        else:
            reason = f"corrupt? {str(error).splitlines()[0][:120] if str(error) else type(error).__name__}"
        raise NMTError(f"{path}: not a readable checkpoint ({reason}); give a .pt file from a run's "
                       "checkpoints/ folder") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise NMTError(f"{path}: not an nmt checkpoint (no '{FORMAT}' marker)")
    if payload.get("version") != VERSION:
        raise NMTError(f"{path}: checkpoint format version {payload.get('version')} but this nmt reads version "
                       f"{VERSION}; use the nmt release that wrote it")
    missing = [key for key in needs if key not in payload]
    if missing:
        raise NMTError(f"{path}: an incomplete nmt checkpoint (no {', '.join(missing)}); use another checkpoint")
    return payload


def latest_intact(folder: Path) -> tuple[Path, dict] | None:
    """The intact checkpoint in `folder` with the most training steps (last.pt on a tie), or None when there is
    none; unreadable ones are named and skipped."""
    found = {}
    for path in sorted(folder.glob("*.pt"), key=lambda p: p.name != "last.pt"):
        try:
            found[path] = load(path)
        except NMTError as error:
            log.warning("%s; skipping it", error)
    if not found:
        return None
    step = {path: payload.get("progress", {}).get("step", -1) for path, payload in found.items()}
    path = max(step, key=step.get)  # max keeps the first (last.pt) on ties
    others = [f"{p.name} at step {s}" for p, s in sorted(step.items(), key=lambda item: item[1]) if p != path]
    log.info("resuming from %s at step %d%s", path, step[path], f" (also found: {', '.join(others)})" if others else "")
    return path, found[path]


def step_checkpoints(folder: Path) -> list[Path]:
    """A run's kept `step_<step>.pt` checkpoints, oldest first."""
    return sorted(folder.glob("step_*.pt"))


def average(paths: list[Path]) -> dict:
    """One checkpoint whose weights are the mean of `paths`' weights (same model and tokenizer required),
    with the first one's config and tokenizer; without training state, so it is for decoding only."""
    if len(paths) < 2:
        raise NMTError("averaging needs at least two checkpoints")
    payloads = [load(path, needs=("model", "tokenizer", "config")) for path in paths]
    first, reference = payloads[0], paths[0]
    shapes = [{k: tuple(v.shape) for k, v in payload["model"].items()} for payload in payloads]
    for path, payload, shape in zip(paths[1:], payloads[1:], shapes[1:]):
        if shape != shapes[0]:
            differ = sorted(set(shape.items()) ^ set(shapes[0].items()))[0][0]
            raise NMTError(f"{path}: its model differs from {reference}'s (first difference: {differ}); "
                           "average checkpoints of one run or of runs with the same model settings")
        if tokenizer_difference(payload["tokenizer"], first["tokenizer"]):
            raise NMTError(f"{path}: its tokenizer differs from {reference}'s; average checkpoints trained "
                           "on the same data and sentencepiece model")
    models = [payload["model"] for payload in payloads]
    for i in range(1, len(paths)):  # best.pt is often last.pt's step: those weights would count twice
        twin = next((j for j in range(i) if all(torch.equal(v, models[j][k]) for k, v in models[i].items())), None)
        if twin is not None:
            log.warning("%s holds the same weights as %s: they count twice in the average", paths[i], paths[twin])
    averaged = {key: (sum(model[key].double() for model in models) / len(models)).to(value.dtype)
                if value.is_floating_point() else value.clone() for key, value in first["model"].items()}
    return {"model": averaged, "config": first["config"], "tokenizer": first["tokenizer"],
            "averaged_from": [str(path) for path in paths]}


def tokenizer_difference(a: dict, b: dict) -> str | None:
    """Which side of two tokenizer state dicts differs: "target vocabulary", "source tokenizer", or None."""
    for side, prefix in (("target vocabulary", "tgt"), ("source tokenizer", "src")):
        if a[f"{prefix}_keep"] != b[f"{prefix}_keep"] or not torch.equal(a[f"{prefix}_model"], b[f"{prefix}_model"]):
            return side
    return None


@dataclass
class Loaded:
    model: Seq2Seq
    tokenizer: Tokenizer
    config: Config
    validation_bleu: float | None = None  # the best validation BLEU of the run when it was saved


def load_for_inference(path: Path, device: torch.device) -> Loaded:
    """Model in eval mode, tokenizer and config, from the checkpoint alone."""
    payload = load(path, needs=("config", "tokenizer", "model"))
    config = config_from_dict(payload["config"], f"{path} (embedded config)")
    tokenizer = Tokenizer.from_state_dict(payload["tokenizer"])
    model = Seq2Seq(config.model, len(tokenizer.src), len(tokenizer.tgt))
    model.load_state_dict(payload["model"])
    best = payload.get("progress", {}).get("best_bleu")
    return Loaded(model.to(device).eval(), tokenizer, config, best if best is not None and best >= 0 else None)
