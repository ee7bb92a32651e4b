"""Atomic checkpoints that rebuild their model, tokenizer and config on their own.

A checkpoint is written to a temporary file in the same folder, flushed and
fsynced, then renamed over the old one, so a crash or a full disk leaves the
previous checkpoint intact. Everything in it is a tensor or a plain type, so it
loads with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from nmt.config import Config, config_from_dict
from nmt.errors import NMTError
from nmt.model import Seq2Seq
from nmt.tokenizer import Tokenizer

log = logging.getLogger(__name__)

FORMAT = "nmt-checkpoint"
VERSION = 1


def save(payload: dict, path: Path) -> None:
    """Write atomically; on failure the previous file at `path` is untouched and NMTError is raised."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "version": VERSION, **payload}, buffer)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(partial, "wb") as handle:
            handle.write(buffer.getbuffer())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except OSError as error:
        partial.unlink(missing_ok=True)
        raise NMTError(
            f"{path}: could not save the checkpoint ({error.strerror or error}); the previous checkpoint "
            f"is intact; free disk space or fix the folder's permissions, then resume with --resume"
        ) from None


def load(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise NMTError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load raises many types on a file that is not a checkpoint
        reason = str(error).splitlines()[0][:120] if str(error) else type(error).__name__
        raise NMTError(f"{path}: not a readable checkpoint (truncated or corrupt? {reason})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise NMTError(f"{path}: not an nmt checkpoint (no '{FORMAT}' marker)")
    if payload.get("version") != VERSION:
        raise NMTError(
            f"{path}: checkpoint format version {payload.get('version')} but this nmt reads version {VERSION}; "
            f"use the nmt release that wrote it"
        )
    return payload


def latest_intact(folder: Path) -> tuple[Path, dict] | None:
    """The intact checkpoint in `folder` with the most training steps (last.pt on a tie), or None when there is
    none; unreadable ones are named and skipped."""
    found = []
    for path in sorted(folder.glob("*.pt"), key=lambda p: p.name != "last.pt"):
        try:
            payload = load(path)
        except NMTError as error:
            log.warning("%s; skipping it", error)
            continue
        found.append((payload.get("progress", {}).get("step", -1), path, payload))
    if not found:
        return None
    step, path, payload = max(found, key=lambda item: item[0])  # max keeps the first (last.pt) on ties
    others = [f"{p.name} at step {s}" for s, p, _ in found if p != path]
    log.info("resuming from %s at step %d%s", path, step, f" (also found: {', '.join(others)})" if others else "")
    return path, payload


@dataclass
class Loaded:
    model: Seq2Seq
    tokenizer: Tokenizer
    config: Config


def load_for_inference(path: Path, device: torch.device) -> Loaded:
    """Model in eval mode, tokenizer and config, from the checkpoint alone."""
    payload = load(path)
    missing = [key for key in ("config", "tokenizer", "model") if key not in payload]
    if missing:
        raise NMTError(f"{path}: an incomplete nmt checkpoint (no {', '.join(missing)}); use another checkpoint")
    config = config_from_dict(payload["config"], f"{path} (embedded config)")
    tokenizer = Tokenizer.from_state_dict(payload["tokenizer"])
    model = Seq2Seq(config.model, len(tokenizer.src), len(tokenizer.tgt))
    model.load_state_dict(payload["model"])
    return Loaded(model.to(device).eval(), tokenizer, config)
