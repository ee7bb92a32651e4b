"""An experiment: open a run directory (or resume one), train, then translate and score the test split
with the best checkpoint (`results.json`). `nmt train` runs `train_and_test`."""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import torch

from nmt import checkpoint
from nmt import run_dir as run_dir_rules
from nmt.config import apply_overrides, config_from_dict, load_config, save_config
from nmt.device import resolve_device
from nmt.distributed import barrier, init_world, shutdown
from nmt.errors import NMTError
from nmt.outputs import write_lines, write_text
from nmt.scoring import score
from nmt.train import Trainer
from nmt.translator import Translator

log = logging.getLogger(__name__)


def open_run(config_path: str | None, overrides: list[str], run_dir: str | None, resume: bool):
    """The run's config and directory, and the checkpoint payload to resume from (None: from the start)."""
    if not resume:
        cfg = load_config(config_path, overrides)
        if run_dir is None:
            stem = Path(config_path).stem if config_path else "multi30k_en_de"
            run_dir = f"{os.environ.get('NMT_RUNS', 'runs')}/{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
        run_dir_rules.check_new_run_folder(Path(run_dir))
        return cfg, Path(run_dir), None
    if not run_dir:
        raise NMTError("--resume needs --run-dir, the folder of the run to continue")
    folder = Path(run_dir)
    if not folder.is_dir():
        raise NMTError(f"--run-dir {folder}: no such run directory to resume")
    found = checkpoint.latest_intact(folder / "checkpoints")
    if found is not None:
        path, payload = found
        if not isinstance(payload.get("config"), dict) or "progress" not in payload:
            raise NMTError(f"{path}: an incomplete nmt checkpoint (no config or progress); it cannot be resumed")
        embedded, source = payload["config"], f"{path} (embedded config)"
    elif run_dir_rules.is_run(folder) and (folder / "config.yaml").is_file():
        log.info("%s: the run saved no checkpoint before it stopped; starting it from step 0", folder)
        payload, source = None, str(folder / "config.yaml")
        embedded = load_config(folder / "config.yaml").to_dict()
    else:
        raise NMTError(f"{folder}: no checkpoint to resume from; start a new run with this --run-dir or another")
    wanted = load_config(config_path, overrides).to_dict() if config_path else apply_overrides(
        copy.deepcopy(embedded), overrides)
    run_dir_rules.check_resume_changes(embedded, wanted, source)
    return config_from_dict(wanted, source), folder, payload


def train_and_test(config_path: str | None = None, overrides: list[str] = (), run_dir: str | None = None,
                   resume: bool = False) -> dict:
    """Train, then score the test split with the best checkpoint; returns results.json's content."""
    cfg, folder, payload = open_run(config_path, list(overrides), run_dir, resume)
    world = init_world(resolve_device(cfg.train.device).type)
    lock = None
    try:
        new_folder = not folder.exists()
        lock = run_dir_rules.lock(folder) if world.is_main else None  # before anything in it is read or written
        started = time.time()
        try:
            trainer = Trainer(cfg, folder, world, payload)  # loads the data: bad input fails before writing
        except NMTError:
            if new_folder and lock is not None:  # leave no empty run directory behind
                lock.close()  # closing twice (again below) is harmless
                shutil.rmtree(folder, ignore_errors=True)
            raise
        if world.is_main:
            warn_if_sized_for_a_gpu(trainer)
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
        if lock is not None:
            lock.close()
        shutdown(world)


def warn_if_sized_for_a_gpu(trainer) -> None:
    """Beyond 20 M parameters a run on a CPU takes days rather than minutes: the default config is sized for a
    GPU, and a user who starts it on a laptop should hear so before the first step."""
    parameters = trainer.model.num_parameters()
    if trainer.device.type == "cpu" and parameters > 20_000_000:
        log.warning("this model (%.1f M parameters) is sized for a GPU and trains slowly on a CPU; the "
                    "repository's configs/multi30k_en_de_cpu.yaml (4.3 M parameters; /app/configs/ in the Docker "
                    "image) is sized for one: about 37 BLEU on test2016 with --set train.max_minutes=20 on 2 cores "
                    "(README, Results)", parameters / 1e6)


def final_test_evaluation(trainer, stop_reason: str, wall_seconds: float) -> dict:
    cfg, run_dir, progress = trainer.cfg, trainer.run_dir, trainer.progress
    results = {"steps": progress.step, "epochs_completed": progress.epoch - 1,
               "train_minutes": round(progress.elapsed / 60, 2), "wall_minutes": round(wall_seconds / 60, 2),
               "stopped": stop_reason, "best_valid_bleu": progress.best_bleu, "non_finite_steps": progress.bad_steps,
               "parameters": trainer.model.num_parameters(), "device": str(trainer.device),
               "precision": trainer.precision}
    if trainer.device.type == "cuda":
        results["gpu"] = torch.cuda.get_device_name(trainer.device)
        results["peak_gpu_memory_mib"] = round(torch.cuda.max_memory_allocated(trainer.device) / 2**20)
    if (test := trainer.data.test) is not None:
        best = run_dir / "checkpoints" / "best.pt"
        trainer.model.load_state_dict(checkpoint.load(best)["model"])
        decode = cfg.decode
        log.info("translating %s (%d sentences, beam %d) with %s", test.name, len(test.src), decode.beam_size, best)
        # float32, as `nmt translate` decodes by default: the same BLEU
        hypotheses = Translator(trainer.model, trainer.tokenizer, decode, device=trainer.device).translate(
            test.src, progress=sys.stderr.isatty())
        hyp_path = run_dir / f"test.hyp.{cfg.data.tgt_lang}"
        write_lines(hyp_path, hypotheses)
        scores = score(hypotheses, [test.tgt])
        results.update(test_split=test.name, checkpoint=str(best), beam_size=decode.beam_size,
                       length_penalty=decode.length_penalty, hypotheses=str(hyp_path),
                       **{f"test_{m}": scores[m] for m in ("bleu", "chrf", "ter")},
                       **{f"{m}_signature": scores[f"{m}_signature"] for m in ("bleu", "chrf", "ter")})
        log.info("test %s: %s", test.name, scores["bleu_text"])
        log.info("BLEU signature: %s", scores["bleu_signature"])
        log.info("chrF2 = %.2f  (%s)", scores["chrf"], scores["chrf_signature"])
        log.info("TER = %.2f  (%s)", scores["ter"], scores["ter_signature"])
    write_text(run_dir / "results.json", json.dumps(results, indent=2) + "\n")
    return results
