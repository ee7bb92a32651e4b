"""metrics.jsonl: one JSON object per logged step, validation or event; TensorBoard too when installed."""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

from nmt.cache import written_whole


class MetricsLog:
    def __init__(self, run_dir: Path, *, enabled: bool, truncate_after_step: int):
        self.path = run_dir / "metrics.jsonl"
        self.enabled = enabled
        self._tensorboard = None
        if not enabled:
            return
        if self.path.exists():
            # a resumed run repeats the steps after its checkpoint: drop what they logged the first time
            kept = [line for line in read_metrics(self.path) if line.get("step", 0) <= truncate_after_step]
            with written_whole(self.path) as partial:  # a kill here must not cut the run's history short
                partial.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
        with contextlib.suppress(ImportError):  # tensorboard is an optional extra
            from torch.utils.tensorboard import SummaryWriter

            self._tensorboard = SummaryWriter(str(run_dir / "tensorboard"))

    def write(self, **record) -> None:
        if not self.enabled:
            return
        record = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        if self._tensorboard is not None:
            for key, value in record.items():
                if key not in ("step", "epoch") and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tensorboard.add_scalar(key, value, record.get("step", 0))
            self._tensorboard.flush()


def read_metrics(path: Path) -> list[dict]:
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(json.JSONDecodeError):  # a blank line, or one cut short by a crash
            records.append(json.loads(line))
    return records
