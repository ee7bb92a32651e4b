"""Learning-rate schedules for SGD.

`budget`: constant, then multiplied by `lr_decay` at evenly spaced fractions of the run's budget
(`budget_decay_start`, then `budget_decays` points before the end). A run limited by wall-clock minutes anneals
however fast the machine is: Luong et al.'s epoch schedule, which starts decaying at a fixed epoch, never decays on
a machine too slow to reach that epoch. `plateau`: multiply the rate by `lr_decay` whenever validation perplexity
fails to improve on the best so far. `epoch`: multiply it at the end of every epoch from `decay_start_epoch` on.
`none`: constant. Never below `min_lr`.
"""

from __future__ import annotations

import logging
import math

from nmt.config import TrainConfig

log = logging.getLogger(__name__)


def budget_fraction(cfg: TrainConfig, step: int, elapsed_seconds: float, epochs_done: float) -> float:
    """How much of the run's budget is spent, 0 to 1: the largest fraction among the limits that are set
    (`max_minutes`, `max_steps`, and always `max_epochs`), since the first of them to run out ends the run."""
    steps = step / cfg.max_steps if cfg.max_steps else 0.0
    minutes = elapsed_seconds / (60.0 * cfg.max_minutes) if cfg.max_minutes else 0.0
    return min(1.0, max(epochs_done / cfg.max_epochs, steps, minutes))


def seconds_left(cfg: TrainConfig, step: int, elapsed_seconds: float) -> float:
    """Training seconds before `max_minutes` or `max_steps` ends the run (inf with neither), the steps left at
    the run's mean pace so far."""
    minutes = 60.0 * cfg.max_minutes - elapsed_seconds if cfg.max_minutes else math.inf
    steps = (cfg.max_steps - step) * elapsed_seconds / step if cfg.max_steps and step else math.inf
    return min(minutes, steps)


def budget_decay_points(cfg: TrainConfig) -> list[float]:
    """The budget fractions at which the rate is multiplied by `lr_decay`: 0.5, 0.6, ..., 0.9 by default."""
    start, count = cfg.budget_decay_start, cfg.budget_decays
    return [start + i * (1.0 - start) / count for i in range(count)]


def budget_lr(cfg: TrainConfig, fraction: float) -> float:
    """The rate once `fraction` of the budget is spent: a pure function, so a resumed run agrees."""
    decays = sum(fraction >= point for point in budget_decay_points(cfg))
    # a floor above the starting rate (Adam's 5e-5 under the default min_lr 1e-4) never raises it
    return min(cfg.lr, max(cfg.min_lr, cfg.lr * cfg.lr_decay ** decays))


class LRSchedule:
    def __init__(self, cfg: TrainConfig, optimizer):
        self.cfg, self.optimizer = cfg, optimizer
        self.best_ppl = math.inf

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def _set(self, new_lr: float, why: str) -> None:
        if new_lr != self.lr:
            log.info("lr %.4g -> %.4g (%s)", self.lr, new_lr, why)
            for group in self.optimizer.param_groups:
                group["lr"] = new_lr

    def _decay(self, why: str) -> None:
        self._set(min(self.lr, max(self.cfg.min_lr, self.lr * self.cfg.lr_decay)), why)

    def follow_budget(self, fraction: float) -> None:
        """Before each step: the budget schedule's rate for the fraction of the budget spent."""
        if self.cfg.lr_schedule == "budget":
            self._set(budget_lr(self.cfg, fraction), f"{100 * fraction:.0f}% of the training budget spent")

    def after_validation(self, valid_ppl: float) -> None:
        if self.cfg.lr_schedule == "plateau" and valid_ppl >= self.best_ppl:
            self._decay(f"validation perplexity {valid_ppl:.2f} did not improve on {self.best_ppl:.2f}")
        self.best_ppl = min(self.best_ppl, valid_ppl)

    def after_epoch(self, epoch: int) -> None:
        if self.cfg.lr_schedule == "epoch" and epoch >= self.cfg.decay_start_epoch:
            self._decay(f"epoch {epoch} >= train.decay_start_epoch")

    def state_dict(self) -> dict:
        return {"best_ppl": self.best_ppl}

    def load_state_dict(self, state: dict) -> None:
        self.best_ppl = state["best_ppl"]
