"""A training run: its directory and config, resuming it, and the `nmt train` entry point."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from nmt import checkpoint
from nmt.config import apply_overrides, config_from_dict, load_config, save_config
from nmt.device import resolve_device
from nmt.distributed import barrier, init_world, shutdown
from nmt.errors import NMTError
from nmt.report import final_test_evaluation
from nmt.train import Trainer

log = logging.getLogger(__name__)


def open_run(config_path: str | None, overrides: list[str], run_dir: str | None, resume: bool):
    """The run's config and directory, and the checkpoint payload to resume from (or None)."""
    if resume:
        if not run_dir:
            raise NMTError("--resume needs --run-dir, the folder of the run to continue")
        folder = Path(run_dir)
        if not folder.is_dir():
            raise NMTError(f"{folder}: no such run directory to resume")
        path, payload = checkpoint.newest_intact(folder / "checkpoints")
        log.info("resuming from %s", path)
        cfg = config_from_dict(apply_overrides(payload["config"], overrides), f"{path} (embedded config)")
        return cfg, folder, payload
    cfg = load_config(config_path, overrides)
    if run_dir is None:
        stem = Path(config_path).stem if config_path else "multi30k_en_de"
        run_dir = f"{os.environ.get('NMT_RUNS', 'runs')}/{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    folder = Path(run_dir)
    if (folder / "metrics.jsonl").exists() or any((folder / "checkpoints").glob("*.pt")):
        raise NMTError(f"{folder} already holds a run; continue it with --resume, or choose another --run-dir")
    return cfg, folder, None


def train(config_path: str | None = None, overrides: list[str] = (), run_dir: str | None = None,
          resume: bool = False) -> dict:
    """Train, then score the test split with the best checkpoint; returns results.json's content."""
    cfg, folder, payload = open_run(config_path, list(overrides), run_dir, resume)
    world = init_world(resolve_device(cfg.train.device).type)
    try:
        started = time.time()
        trainer = Trainer(cfg, folder, world, payload)  # loads the data first: bad input fails before writing
        if world.is_main:
            (folder / "checkpoints").mkdir(parents=True, exist_ok=True)
            save_config(cfg, folder / "config.yaml")
            trainer.tokenizer.save_models(folder)
            log.info("run directory: %s", folder)
        barrier(world)
        reason = trainer.run()
        results = final_test_evaluation(trainer, reason, time.time() - started) if world.is_main else {}
        barrier(world)
        return results
    finally:
        shutdown(world)
