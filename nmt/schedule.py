"""Learning-rate schedules for SGD as Luong et al. (2015) use them.

`plateau`: multiply the rate by `lr_decay` whenever validation perplexity fails
to improve on the best so far. `epoch`: multiply it at the end of every epoch
from `decay_start_epoch` on. `none`: constant. Never below `min_lr`.
"""

from __future__ import annotations

import logging
import math

from nmt.config import TrainConfig

log = logging.getLogger(__name__)


class LRSchedule:
    def __init__(self, cfg: TrainConfig, optimizer):
        self.cfg, self.optimizer = cfg, optimizer
        self.best_ppl = math.inf

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def _decay(self, why: str) -> None:
        new_lr = max(self.cfg.min_lr, self.lr * self.cfg.lr_decay)
        if new_lr < self.lr:
            log.info("lr %.4g -> %.4g (%s)", self.lr, new_lr, why)
            for group in self.optimizer.param_groups:
                group["lr"] = new_lr

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
