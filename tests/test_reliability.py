import errno
import json
import os

import pytest
import torch

from nmt import checkpoint
from nmt.cli import main
from nmt.errors import NMTError
from nmt.metrics_log import read_metrics
from tests.conftest import TINY_CONFIG
from tests.test_clipping import StepHarness


def test_fp16_unscales_before_clipping_and_steps_through_the_scaler(monkeypatch):
    """simple-nmt and JoeyNMT clip scaled gradients; the threshold must apply to the true gradient."""
    harness = StepHarness(max_grad_norm=5.0)
    _, true_norm = harness.true_gradient()
    calls = []
    scale = 1024.0

    class RecordingScaler:
        def scale(self, loss):
            calls.append("scale")
            return loss * scale

        def unscale_(self, optimizer):
            calls.append("unscale")
            for group in optimizer.param_groups:
                for p in group["params"]:
                    p.grad.div_(scale)

        def step(self, optimizer):
            calls.append("step")
            optimizer.step()

        def update(self):
            calls.append("update")

    real_clip = torch.nn.utils.clip_grad_norm_

    def recording_clip(params, max_norm, *args, **kwargs):
        calls.append("clip")
        return real_clip(params, max_norm, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recording_clip)
    harness.trainer.scaler = RecordingScaler()
    _, norm, _ = harness.trainer.train_step(harness.batch)
    assert calls == ["scale", "unscale", "clip", "step", "update"]
    assert norm == pytest.approx(true_norm, rel=1e-5)  # the norm of the unscaled gradient


def test_a_failing_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    checkpoint.save({"model": {"w": torch.ones(3)}}, path)
    before = path.read_bytes()

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(NMTError, match="No space left on device.*previous checkpoint is intact"):
        checkpoint.save({"model": {"w": torch.zeros(3)}}, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["last.pt"]  # no partial file left behind


def test_training_stops_cleanly_when_saving_fails(tmp_path, monkeypatch, capsys):
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(os, "replace", read_only)
    code = main(["train", "--config", str(TINY_CONFIG), "--run-dir", str(tmp_path / "run"),
                 "--set", "train.max_epochs=1", "--set", "train.threads=1"])
    assert code == 1
    assert "Read-only file system" in capsys.readouterr().err
    assert not list((tmp_path / "run" / "checkpoints").glob("*.pt"))


def test_non_finite_steps_are_skipped_counted_and_stop_the_run(tmp_path, capsys, monkeypatch):
    from nmt import train as train_module

    real_loss = train_module.summed_nll
    calls = {"n": 0}

    def nan_after_five_steps(*args, **kwargs):
        calls["n"] += 1
        loss = real_loss(*args, **kwargs)
        return loss * float("nan") if calls["n"] > 5 else loss

    monkeypatch.setattr(train_module, "summed_nll", nan_after_five_steps)
    run_dir = tmp_path / "run"
    code = main(["train", "--config", str(TINY_CONFIG), "--run-dir", str(run_dir),
                 "--set", "train.max_bad_steps=3", "--set", "train.threads=1"])
    assert code == 1
    err = capsys.readouterr().err
    assert "3 consecutive steps had a non-finite value" in err
    assert "no checkpoint had been written yet" in err  # it stopped inside the first epoch
    events = [r for r in read_metrics(run_dir / "metrics.jsonl") if r.get("event") == "non_finite"]
    assert [r["step"] for r in events] == [6, 7, 8]


def test_out_of_memory_batches_are_skipped(tmp_path, monkeypatch):
    from nmt import train as train_module

    real_step = train_module.Trainer.train_step
    calls = {"n": 0}

    def sometimes_oom(self, batch):
        calls["n"] += 1
        if calls["n"] in (3, 4):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_step(self, batch)

    monkeypatch.setattr(train_module.Trainer, "train_step", sometimes_oom)
    run_dir = tmp_path / "run"
    assert main(["train", "--config", str(TINY_CONFIG), "--run-dir", str(run_dir), "--set", "train.max_epochs=1",
                 "--set", "train.threads=1", "--set", "data.test_split=null"]) == 0
    assert sum(r.get("event") == "out_of_memory" for r in read_metrics(run_dir / "metrics.jsonl")) == 2
    assert json.loads((run_dir / "results.json").read_text())["steps"] == calls["n"] - 2


def test_repeated_out_of_memory_stops_with_advice(tmp_path, monkeypatch, capsys):
    from nmt import train as train_module

    def always_oom(self, batch):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(train_module.Trainer, "train_step", always_oom)
    assert main(["train", "--config", str(TINY_CONFIG), "--run-dir", str(tmp_path / "run"),
                 "--set", "train.threads=1"]) == 1
    assert "lower train.batch_tokens" in capsys.readouterr().err


def test_a_signal_during_validation_still_saves_and_says_how_to_resume(tmp_path, monkeypatch, capsys):
    import signal

    from nmt import train as train_module
    from nmt.interrupt import Interrupted

    def interrupted_validation(self):
        self.signals.signum = signal.SIGTERM  # as the handler does when SIGTERM lands mid-validation
        raise Interrupted(signal.SIGTERM, "")

    monkeypatch.setattr(train_module.Trainer, "validate", interrupted_validation)
    run_dir = tmp_path / "run"
    code = main(["train", "--config", str(TINY_CONFIG), "--run-dir", str(run_dir), "--set", "train.threads=1"])
    assert code == 128 + signal.SIGTERM
    assert "nmt train --resume --run-dir" in capsys.readouterr().err
    saved = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["progress"]
    assert saved["step"] > 0 and saved["epoch"] == 1  # the first epoch's steps, before its validation


@pytest.mark.parametrize("abandoned, max_steps", [(2, 40), (3, 40), (6, 50)],
                         ids=["mid-epoch validation", "end-of-epoch validation", "the last, at an epoch's end"])
def test_a_validation_a_signal_abandoned_is_done_on_resume_as_the_straight_run_did_it(tmp_path, monkeypatch,
                                                                                      abandoned, max_steps):
    """Steps 10, 20, 30, 40 (and 50) validate (train.valid_every=10) and so do the ends of the 25-batch epochs;
    the plateau schedule makes the learning rate depend on each of them. A signal during the 2nd, 3rd or 6th
    validation abandons it; the resumed run must do it, once, and end where the straight run ended. (Step 50
    ends the budget and epoch 2: a run resumed there used to skip that epoch's end.)"""
    import signal

    from nmt import train as train_module
    from nmt.interrupt import Interrupted

    options = ["--config", str(TINY_CONFIG), "--set", f"train.max_steps={max_steps}", "--set", "train.valid_every=10",
               "--set", "train.lr_schedule=plateau", "--set", "data.test_split=null", "--set", "train.threads=1"]

    def history(run_dir):
        records = read_metrics(run_dir / "metrics.jsonl")
        return ([(r["step"], r["valid_bleu"], r["lr"]) for r in records if "valid_bleu" in r],
                [(r["step"], r["clip_fraction"]) for r in records if r.get("event") == "epoch_end"])

    assert main(["train", *options, "--run-dir", str(tmp_path / "straight")]) == 0
    validate, calls = train_module.Trainer.validate, []

    def abandoned_validation(self):
        calls.append(self.progress.step)
        if len(calls) == abandoned:
            self.signals.signum = signal.SIGTERM  # as the handler does when SIGTERM lands mid-validation
            raise Interrupted(signal.SIGTERM, "")
        return validate(self)

    monkeypatch.setattr(train_module.Trainer, "validate", abandoned_validation)
    run_dir = tmp_path / "interrupted"
    assert main(["train", *options, "--run-dir", str(run_dir)]) == 128 + signal.SIGTERM
    monkeypatch.setattr(train_module.Trainer, "validate", validate)
    assert main(["train", "--resume", "--run-dir", str(run_dir)]) == 0

    validations, epochs = history(tmp_path / "straight")
    assert [step for step, *_ in validations] == sorted([25, *range(10, max_steps + 1, 10)])
    assert calls[-1] == validations[abandoned - 1][0]
    assert history(run_dir) == (validations, epochs)
    for name in ("last.pt", "best.pt"):
        straight = torch.load(tmp_path / "straight" / "checkpoints" / name, weights_only=True)
        resumed = torch.load(run_dir / "checkpoints" / name, weights_only=True)
        assert resumed["progress"]["step"] == straight["progress"]["step"]
        assert all(torch.equal(resumed["model"][key], value) for key, value in straight["model"].items())


def test_memory_freed_in_pieces_goes_back_to_the_system():
    """Training frees tensors of a new size every batch; glibc keeps such pieces in its heap, and a run grew
    to three times the memory it used. `release_free_memory` (called every 100 steps) hands them back."""
    from nmt import device

    if device._malloc_trim() is None:
        pytest.skip("not glibc: nothing to hand back")

    def rss_mib() -> int:
        with open("/proc/self/status") as status:
            return int(next(line for line in status if line.startswith("VmRSS")).split()[1]) // 1024

    torch.ones(2**20)  # a freed 4 MiB block raises glibc's mmap threshold: smaller blocks now come from its heap
    kept, freed = [], []
    for i in range(400):
        (kept if i % 10 == 9 else freed).append(torch.ones(2**18))  # 1 MiB each, every tenth kept
    before = rss_mib()
    del freed
    device.release_free_memory()
    assert rss_mib() < before - 250  # of the 360 MiB freed
    assert all(t.sum() == 2**18 for t in kept)  # what is still in use is untouched


def test_a_resume_on_a_machine_that_computes_differently_says_so_in_one_line(tmp_path, caplog):
    """What ran is recorded (checkpoint and metrics.jsonl); a resume with another recurrence path warns once."""
    import json

    from nmt.checkpoint import restore_training, training_payload
    from nmt.config import load_config
    from nmt.distributed import World
    from nmt.train import Trainer
    from tests.conftest import TINY_CONFIG

    def trainer(name, fused):
        cfg = load_config(TINY_CONFIG, [f"train.fused_recurrence={fused}", "train.device=cpu"])
        (tmp_path / name).mkdir()
        return Trainer(cfg, tmp_path / name, World(), None)

    first = trainer("first", "true")
    assert first.computed_by["recurrence"] in ("C kernels", "PyTorch operations")
    assert first.computed_by["precision"] == first.precision
    first.cfg.train.max_steps = 1
    first.run()
    start = json.loads((tmp_path / "first" / "metrics.jsonl").read_text().splitlines()[0])
    assert start["event"] == "start" and start["computed_by"] == first.computed_by
    payload = training_payload(first)
    assert payload["computed_by"] == first.computed_by
    with caplog.at_level("WARNING"):
        restore_training(trainer("same", "true"), payload)
    assert not [r for r in caplog.records if "bit for bit" in r.getMessage()]
    other = trainer("other", "false")
    assert other.computed_by["recurrence"] == "autograd's step loop"
    with caplog.at_level("WARNING"):
        restore_training(other, payload)
    warnings = [r.getMessage() for r in caplog.records if "bit for bit" in r.getMessage()]
    assert len(warnings) == 1 and "autograd's step loop" in warnings[0]
