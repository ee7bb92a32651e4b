"""`nmt bench` runs end to end (a smoke test: speed is never asserted, only that every figure is there)."""

import json

import pytest
import torch

from nmt import cli
from nmt.device import resolve_precision
from nmt.model import kernels
from tests.conftest import TINY_CONFIG, run_nmt

FIGURES = ("train_tokens_per_sec", "matmul_gflops", "fraction_of_flop_bound", "greedy_sentences_per_sec",
           "beam5_sentences_per_sec", "parameters", "peak_rss_mib")


@pytest.mark.parametrize("with_checkpoint", [False, True])
def test_bench_reports_every_figure_as_its_last_line_and_in_the_json_file(tmp_path, tiny_run, with_checkpoint):
    out = tmp_path / "bench.json"
    extra = ["--checkpoint", str(tiny_run / "checkpoints" / "best.pt")] if with_checkpoint else []
    result = run_nmt("bench", "--config", str(TINY_CONFIG), "--warmup-steps", "2", "--steps", "4",
                     "--decode-sentences", "10", "--json", str(out), *extra)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == json.loads(out.read_text())
    for name in FIGURES:
        assert report[name] > 0, name
    # the tiny config asks for `auto`: bf16 on a CPU with native bfloat16, fp32 on an AVX2 one
    assert report["decode_sentences"] == 10
    assert report["precision"] == resolve_precision("auto", torch.device("cpu"))
    if with_checkpoint:  # a few training steps translate nothing right; the trained tiny checkpoint does
        assert report["beam5_bleu"] > 0 and report["greedy_bleu"] > 0
    assert ("checkpoint_load_sec" in report) == with_checkpoint
    if not with_checkpoint:  # the bench's own model translates
        assert report["decoded_parameters"] == report["parameters"]
    assert "beam-5 sentences/s" in result.stdout
    # the tiny model's general attention runs the fused recurrence: on its C kernels where they build
    expected = kernels.describe()
    assert report["recurrence_steps"] == expected
    assert any(line.startswith("decoder loop steps") and line.endswith(expected) for line in result.stdout.splitlines())


def test_bench_names_the_size_of_a_checkpoint_that_is_not_the_configs_model(tmp_path, tiny_run):
    from nmt.checkpoint import load_for_inference

    checkpoint = tiny_run / "checkpoints" / "best.pt"
    decoded = load_for_inference(checkpoint, torch.device("cpu")).model.num_parameters()
    result = run_nmt("bench", "--config", str(TINY_CONFIG), "--set", "model.hidden_size=64", "--skip-train",
                     "--decode-sentences", "3", "--checkpoint", str(checkpoint))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["decoded_parameters"] == decoded != report["parameters"]
    assert f"{decoded:,} parameters (the checkpoint's)" in result.stdout


def test_bench_step_and_sentence_counts_are_range_checked_before_any_work(capsys):
    for flag, value in (("--steps", "0"), ("--warmup-steps", "-1"), ("--decode-sentences", "0")):
        code = cli.main(["bench", "--config", str(TINY_CONFIG), flag, value])
        assert code == 1 and capsys.readouterr().err.strip() == f"error: {flag} {value}: must be at least " + (
            "0" if flag == "--warmup-steps" else "1")
