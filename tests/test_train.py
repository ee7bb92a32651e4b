import json
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from nmt.metrics_log import read_metrics
from tests.conftest import ROOT, TINY_CONFIG, TINY_DATA, run_nmt


def test_tiny_run_writes_everything(tiny_run):
    for name in ("config.yaml", "spm.model", "metrics.jsonl", "results.json", "checkpoints/last.pt",
                 "checkpoints/best.pt", "test.hyp.de"):
        assert (tiny_run / name).is_file(), name
    records = read_metrics(tiny_run / "metrics.jsonl")
    steps = [r for r in records if "loss" in r and "event" not in r]
    valids = [r for r in records if "valid_bleu" in r]
    assert steps and valids
    for key in ("step", "epoch", "loss", "ppl", "lr", "grad_norm", "clipped", "tokens_per_sec"):
        assert key in steps[0]
    for key in ("valid_loss", "valid_ppl", "valid_bleu"):
        assert key in valids[0]
    results = json.loads((tiny_run / "results.json").read_text())
    assert results["test_bleu"] > 20  # the synthetic grammar is learnable in seconds
    assert results["bleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")
    payload = torch.load(tiny_run / "checkpoints" / "best.pt", weights_only=True)
    for key in ("model", "optimizer", "schedule", "progress", "rng", "config", "tokenizer"):
        assert key in payload


@pytest.mark.parametrize("threshold, expected", [("0.001", True), ("1e9", False)])
def test_clipped_flag_follows_the_threshold(tmp_path, threshold, expected):
    run_dir = tmp_path / "run"
    result = run_nmt("train", "--config", str(TINY_CONFIG), "--run-dir", str(run_dir),
                     "--set", f"train.max_grad_norm={threshold}", "--set", "train.max_epochs=1",
                     "--set", "data.test_split=null")
    assert result.returncode == 0, result.stderr
    steps = [r for r in read_metrics(run_dir / "metrics.jsonl") if "clipped" in r]
    assert steps and all(r["clipped"] is expected for r in steps)
    assert all(r["grad_norm"] > 0.001 for r in steps)  # pre-clip norms, not the clipped ones


def test_overfits_a_small_parallel_set(tmp_path):
    """A tiny model memorises 40 sentence pairs: greedy BLEU >= 90 on them. The rate decays from epoch 80:
    at a constant 1.0 the last epochs wander (seed to seed, 85 to 98 BLEU), which is not what this tests."""
    data = tmp_path / "data"
    data.mkdir()
    for lang in ("en", "de"):
        lines = (TINY_DATA / f"train.{lang}").read_text(encoding="utf-8").splitlines()[:40]
        for split in ("train", "valid", "test"):
            (data / f"{split}.{lang}").write_text("\n".join(lines) + "\n", encoding="utf-8")
    run_dir = tmp_path / "run"
    result = run_nmt("train", "--config", str(TINY_CONFIG), "--run-dir", str(run_dir),
                     "--set", f"data.dataset={data}", "--set", "train.max_epochs=150",
                     "--set", "train.batch_sentences=8", "--set", "train.lr_schedule=epoch",
                     "--set", "train.decay_start_epoch=80", "--set", "train.lr_decay=0.9",
                     "--set", "decode.beam_size=1", "--set", "data.max_len_ratio=10", "--set", "train.log_every=100")
    assert result.returncode == 0, result.stderr
    assert json.loads((run_dir / "results.json").read_text())["test_bleu"] >= 90


def _state(path):
    return torch.load(path, weights_only=True)["model"]


@pytest.mark.slow
def test_sigterm_then_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path):
    options = ["--config", str(TINY_CONFIG), "--set", "train.max_epochs=6", "--set", "data.test_split=null",
               "--set", "train.log_every=1"]
    straight = tmp_path / "straight"
    assert run_nmt("train", *options, "--run-dir", str(straight)).returncode == 0

    interrupted = tmp_path / "interrupted"
    process = subprocess.Popen([sys.executable, "-m", "nmt", "train", *options, "--run-dir", str(interrupted)],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = interrupted / "metrics.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and not (metrics.exists() and len(read_metrics(metrics)) >= 30):
        time.sleep(0.02)
    sent = time.time()
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    assert time.time() - sent < 5
    assert process.returncode == 128 + signal.SIGTERM
    assert "nmt train --resume --run-dir" in stderr
    stopped_at = torch.load(interrupted / "checkpoints" / "last.pt", weights_only=True)["progress"]["step"]
    final_steps = torch.load(straight / "checkpoints" / "last.pt", weights_only=True)["progress"]["step"]
    assert 0 < stopped_at < final_steps  # really interrupted mid-run

    resumed = run_nmt("train", "--resume", "--run-dir", str(interrupted))
    assert resumed.returncode == 0, resumed.stderr
    a, b = _state(straight / "checkpoints" / "last.pt"), _state(interrupted / "checkpoints" / "last.pt")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    logged = [r["step"] for r in read_metrics(interrupted / "metrics.jsonl") if "loss" in r and "event" not in r]
    assert logged == sorted(set(logged))  # steps repeated after the checkpoint were not logged twice


def test_resume_falls_back_to_an_intact_checkpoint(tiny_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)
    last = run_dir / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])  # truncated, as by a crash mid-write of a non-atomic save
    import os
    os.utime(last, None)
    result = run_nmt("train", "--resume", "--run-dir", str(run_dir), "--set", "train.max_epochs=5",
                     "--set", "data.test_split=null")
    assert result.returncode == 0, result.stderr
    assert "last.pt: not a readable checkpoint" in result.stderr
    assert "resuming from" in result.stderr and "best.pt at step" in result.stderr


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("chunk_elements", [2**20, 64])  # one chunk; 2 rows per chunk, the last one short
def test_summed_nll_is_cross_entropy(label_smoothing, chunk_elements, monkeypatch):
    from nmt import loss
    from nmt.loss import summed_nll

    monkeypatch.setattr(loss, "CHUNK_ELEMENTS", chunk_elements)
    logits = torch.randn(50, 30, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 30, (50,))
    expected = torch.nn.functional.cross_entropy(logits, targets, reduction="sum", label_smoothing=label_smoothing)
    ours = summed_nll(logits, targets, label_smoothing)
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(torch.autograd.grad(3 * ours, logits)[0], torch.autograd.grad(3 * expected, logits)[0],
                               rtol=1e-12, atol=1e-12)


def test_summed_nll_of_bf16_logits_has_the_float32_gradient_in_bf16():
    from nmt.loss import summed_nll

    logits = torch.randn(37, 300).bfloat16().requires_grad_()
    targets = torch.randint(0, 300, (37,))
    expected = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum")
    ours = summed_nll(logits, targets)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, expected, rtol=1e-6, atol=1e-4)
    gradient = torch.autograd.grad(ours / 7, logits)[0]
    assert gradient.dtype == torch.bfloat16
    truth = torch.autograd.grad(expected / 7, logits)[0].float()
    torch.testing.assert_close(gradient.float(), truth, rtol=2 ** -6, atol=1e-6)  # two bf16 roundings at most


def test_validation_cadence_patience_pair_limit_and_per_side_tokenizers(tmp_path):
    """valid_every validates every N steps; patience stops after N validations without a better BLEU (a
    rate too small to change the model never improves), and a resumed run that patience ended stops at once (it
    used to train on to its next validation); max_train_pairs takes the first N pairs; tokenizer.joint=false
    trains one sentencepiece model per side."""
    run_dir = tmp_path / "run"
    result = run_nmt("train", "--config", str(TINY_CONFIG), "--run-dir", str(run_dir), "--set", "train.lr=1e-9",
                     "--set", "train.patience=2", "--set", "train.valid_every=5", "--set", "train.max_steps=100",
                     "--set", "data.max_train_pairs=200", "--set", "tokenizer.joint=false",
                     "--set", "data.test_split=null")
    assert result.returncode == 0, result.stderr
    assert "of 200; vocabulary" in result.stderr
    validations = [r["step"] for r in read_metrics(run_dir / "metrics.jsonl") if "valid_bleu" in r]
    assert validations == [5, 10, 15]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["steps"] == 15 and results["stopped"].startswith("early stopping: train.patience=2")
    assert (run_dir / "spm.src.model").exists() and (run_dir / "spm.tgt.model").exists()
    assert not (run_dir / "spm.model").exists()
    resumed = run_nmt("train", "--resume", "--run-dir", str(run_dir))
    assert resumed.returncode == 0, resumed.stderr
    assert [r["step"] for r in read_metrics(run_dir / "metrics.jsonl") if "valid_bleu" in r] == [5, 10, 15]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["steps"] == 15 and results["stopped"].startswith("early stopping: train.patience=2")


@pytest.mark.parametrize("max_steps", [21, 20])
def test_an_epoch_end_leaves_its_validation_to_the_final_one_only_before_the_budget_ends(tmp_path, monkeypatch,
                                                                                         caplog, max_steps):
    """200 pairs in 20-sentence batches: epochs end at steps 10 and 20. A budget that ends at step 21, sooner
    than a validation takes, leaves epoch 2's validation to the run's final one at 21. One that ends at 20
    makes that epoch end the run's end: it validates there, in epoch 2 (it used to be left to the final
    validation, logged in an epoch 3 that never ran). (A validation is made to take 3 s: the tiny model's own
    take about as long as a step, too close to decide by, and on a busy machine a step takes a second or two.)"""
    import logging
    import time

    from nmt import train as train_module
    from nmt.cli import main

    validate = train_module.Trainer.validate
    monkeypatch.setattr(train_module.Trainer, "validate", lambda self: time.sleep(3) or validate(self))
    run_dir = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="nmt"):
        assert main(["train", "--config", str(TINY_CONFIG), "--run-dir", str(run_dir), "--set",
                     f"train.max_steps={max_steps}", "--set", "data.max_train_pairs=200", "--set",
                     "data.test_split=null"]) == 0
    records = read_metrics(run_dir / "metrics.jsonl")
    assert [r["step"] for r in records if r.get("event") == "epoch_end"] == [10, 20]
    validations = [(r["step"], r["epoch"]) for r in records if "valid_bleu" in r]
    assert validations == ([(10, 1), (21, 3)] if max_steps == 21 else [(10, 1), (20, 2)])
    assert ("epoch 2's validation left to the final one" in caplog.text) is (max_steps == 21)


def test_a_validation_that_spends_the_rest_of_the_budget_ends_the_run_at_its_step(tmp_path, monkeypatch):
    """Validation time counts in `max_minutes`: one that overruns the budget ends the run at its own step,
    not one step later with a second validation of a model one update apart."""
    from nmt.config import load_config
    from nmt.distributed import World
    from nmt.train import Trainer

    cfg = load_config(TINY_CONFIG, ["train.max_minutes=0.1", "train.valid_every=5", "data.test_split=null"])
    trainer = Trainer(cfg, tmp_path, World(), None)
    validate = trainer.validate

    def slow_validation():
        result = validate()
        time.sleep(6.5)  # longer than the whole 6-second budget: 5 tiny steps take well under 1 s
        return result

    monkeypatch.setattr(trainer, "validate", slow_validation)
    reason = trainer.run()
    assert trainer.progress.step == 5 and reason.startswith("train.max_minutes")
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl") if "valid_bleu" in r] == [5]


def test_plot_draws_the_runs_curves(tiny_run, tmp_path):
    from PIL import Image

    out = tmp_path / "curves.png"
    result = run_nmt("plot", str(tiny_run), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(out)
    with Image.open(out) as picture:
        assert picture.width > 400 and picture.height > 300
        assert sum(count > 0 for count in picture.convert("L").histogram()) > 10  # drawn, not blank
