"""When the training loop validates, saves and stops, decided from the run's counters alone (no clock, no
model, no other rank), so that a table of cases specifies every decision (tests/test_train_plan.py)."""

from __future__ import annotations

from typing import Literal, NamedTuple

from nmt.checkpoint import Progress
from nmt.config import TrainConfig
from nmt.schedule import seconds_left


class Decision(NamedTuple):
    validate: bool
    why: str
    logged: bool = False  # a validation the user expects does not run: the log says why


class TrainPlan:
    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg

    def validation(self, at: Literal["step", "epoch_end", "end"], progress: Progress,
                   validation_seconds: float | None) -> Decision:
        """Whether to validate after a step (or where a run starts: a stop signal may have abandoned a
        validation), at an epoch's end, or at the run's end. `validation_seconds`: how long this process's
        last validation took (None: it has run none)."""
        cfg, step = self.cfg, progress.step
        if progress.validated_step == step:
            return Decision(False, "validated at this step already")
        if at == "end":
            return Decision(True, "the run's end")
        if at == "step":
            due = bool(cfg.valid_every) and step > 0 and step % cfg.valid_every == 0
            return Decision(due, f"train.valid_every={cfg.valid_every}" if due else "not due")
        if progress.epoch >= cfg.max_epochs or self.stop(progress):
            return Decision(True, "the epoch's end, where the run ends")
        left = seconds_left(cfg, step, progress.elapsed)
        if validation_seconds is None or left >= validation_seconds:
            return Decision(True, "the epoch's end")
        # the run's final validation follows: one now would spend on itself the budget left for training
        return Decision(False, f"epoch {progress.epoch}'s validation left to the final one: the budget ends in "
                               f"{left:.0f} s, a validation takes {validation_seconds:.0f} s", logged=True)

    def stop(self, progress: Progress) -> str | None:
        """Why the run stops now (patience, then the budget, then max_epochs), or None while it goes on."""
        cfg = self.cfg
        if cfg.patience is not None and progress.validations_without_improvement >= cfg.patience:
            return f"early stopping: train.patience={cfg.patience} validations without a better BLEU"
        if cfg.max_steps is not None and progress.step >= cfg.max_steps:
            return f"train.max_steps={cfg.max_steps} reached"
        if cfg.max_minutes is not None and progress.elapsed >= cfg.max_minutes * 60:
            return f"train.max_minutes={cfg.max_minutes} reached"
        return f"train.max_epochs={cfg.max_epochs} reached" if progress.epoch > cfg.max_epochs else None

    def save_due(self, progress: Progress, saved_at: float) -> bool:
        """last.pt every `save_every_minutes` of training (`saved_at`: the training seconds at the last save), so
        that a killed run loses at most that much."""
        every = self.cfg.save_every_minutes
        return every is not None and progress.elapsed - saved_at >= every * 60
