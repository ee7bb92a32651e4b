"""A run directory: which folder a run may use, one process at a time, and what a resume may change.

nmt marks every run directory it creates as a run in the folder's record (`outputs.RECORD`) and writes only
the files in `OWN_FILES` there, so it can tell its own files from a user's and never overwrites the latter.
A process training in a folder holds an exclusive `flock` on `LOCK`; the kernel drops it when the process
dies, so a killed run never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path

from nmt.errors import NMTError
from nmt.outputs import read_record, update_record

log = logging.getLogger(__name__)

LOCK = ".nmt-lock"
OWN_FILES = ("config.yaml", "metrics.jsonl", "results.json", "checkpoints", "spm.model", "spm.src.model",
             "spm.tgt.model", "tensorboard", "curves.png")

#: what a resumed run may set differently from the run it continues: its budget, schedule, logging, where it
#: runs and what it is tested on at the end. Everything else (the training and validation data, tokenizer,
#: model, optimizer, batches, seed) defines the run.
RESUMABLE_CHANGES = {
    "train": {"max_epochs", "max_steps", "max_minutes", "valid_every", "save_every_minutes", "lr_schedule",
              "lr_decay", "decay_start_epoch", "min_lr", "budget_decay_start", "budget_decays", "patience",
              "log_every", "max_bad_steps", "max_oom_batches", "threads", "device", "precision",
              "fused_recurrence", "compile", "keep_checkpoints"},
    "data": {"test_split"},
    "decode": "*",
}


def is_run(folder: Path) -> bool:
    """Marked in the folder's record; `.nmt-run` marked runs made before that record existed."""
    return read_record(folder).get("run") is True or (folder / ".nmt-run").is_file()


def check_new_run_folder(folder: Path) -> None:
    """A fresh run may use a new folder, one holding no file nmt would write, or one of its own runs that was
    killed before its first checkpoint (started again from the beginning)."""
    if folder.exists() and not folder.is_dir():
        raise NMTError(f"--run-dir {folder}: is a file, not a folder; choose a folder path")
    if not folder.exists():
        return
    if is_run(folder):
        if any((folder / "checkpoints").glob("*.pt")):
            raise NMTError(f"{folder} already holds a run; continue it with --resume, or choose another --run-dir")
        log.info("%s holds a run that saved no checkpoint: starting it again from the beginning", folder)
        return
    taken = [name for name in OWN_FILES if (folder / name).exists()] + [p.name for p in folder.glob("test.hyp.*")]
    if taken:
        raise NMTError(f"--run-dir {folder}: holds {taken[0]}, which nmt did not write and would overwrite; "
                       "choose another --run-dir")


def check_resume_changes(embedded: dict, wanted: dict, source: str) -> None:
    """Refuse a resume whose config dict `wanted` changes a setting of the run's `embedded` one that defines it."""
    changed = [f"{section}.{key}" for section, values in wanted.items() for key, value in values.items()
               if embedded.get(section, {}).get(key) != value
               and RESUMABLE_CHANGES.get(section) != "*" and key not in RESUMABLE_CHANGES.get(section, set())]
    if changed:
        raise NMTError(f"{source}: --resume cannot change {', '.join(changed)} (they define the run it "
                       "continues); start a new run with another --run-dir instead")


def lock(folder: Path):
    """Lock `folder` for the one process training in it (rank 0 under torchrun) until the returned file closes."""
    folder.mkdir(parents=True, exist_ok=True)
    handle = open(folder / LOCK, "a+", encoding="utf-8")  # noqa: SIM115 - held for the whole run
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise NMTError(f"{folder}: another nmt process (pid {holder}) is training in this run directory; "
                       "wait for it to finish, or choose another --run-dir") from None
    handle.truncate(0)  # "a+": the write goes to the end, now the start
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    update_record(folder, lambda record: record.update(run=True))
    for stale in [*folder.glob(".*.partial*"), *(folder / "checkpoints").glob(".*.partial*")]:
        stale.unlink(missing_ok=True)  # a killed process's unfinished writes: never read
    return handle
