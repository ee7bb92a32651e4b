"""Precision follows the machine: `auto` picks bf16 only where the CPU computes it natively, an explicit bf16
is refused for training where oneDNN has no bf16 kernels (before any data is read or anything written),
and everything this CPU does support trains, decodes and benchmarks."""

import json
import logging
from pathlib import Path

import pytest
import torch

from nmt import cli, device
from nmt.config import load_config
from nmt.errors import NMTError
from tests.conftest import ROOT, TINY_CONFIG, run_nmt

CPU = torch.device("cpu")


def supported_precisions() -> list[str]:
    """What this machine trains in: fp32 always, bf16 where oneDNN has bf16 kernels, and auto."""
    return ["auto", "fp32"] + (["bf16"] if device.cpu_bf16_support() != "none" else [])


@pytest.fixture
def cpu_without_bf16(monkeypatch):
    """Stand in for an AVX2 CPU, whatever this one is."""
    monkeypatch.setattr(device, "cpu_bf16_support", lambda: "none")
    monkeypatch.setattr(device, "cpu_capability", lambda: "AVX2")


@pytest.fixture
def no_data_may_be_read(monkeypatch):
    import nmt.data.prepare
    import nmt.data.sources

    def refuse(*args, **kwargs):
        raise AssertionError("data was read before the precision was checked")

    monkeypatch.setattr(nmt.data.sources, "load_data", refuse)
    monkeypatch.setattr(nmt.data.prepare, "load_data", refuse)


@pytest.mark.parametrize("support, expected", [("native", "bf16"), ("emulated", "fp32"), ("none", "fp32")])
def test_auto_is_bf16_only_where_the_cpu_computes_it_natively(monkeypatch, support, expected):
    monkeypatch.setattr(device, "cpu_bf16_support", lambda: support)
    assert device.resolve_precision("auto", CPU) == expected
    assert device.resolve_precision("auto", CPU, training=False) == expected
    assert device.resolve_precision("fp32", CPU) == "fp32"


def test_explicit_bf16_training_without_bf16_kernels_is_one_clear_error(cpu_without_bf16):
    with pytest.raises(NMTError) as error:
        device.resolve_precision("bf16", CPU)
    message = str(error.value)
    assert "AVX2" in message and "train.precision=auto" in message and "\n" not in message


def test_explicit_bf16_decoding_without_native_bf16_warns_once(cpu_without_bf16, caplog):
    device._warn_once.cache_clear()
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            assert device.resolve_precision("bf16", CPU, setting="--precision", training=False) == "bf16"
    warnings = [r for r in caplog.records if "--precision=bf16" in r.getMessage()]
    assert len(warnings) == 1 and "fp32" in warnings[0].getMessage()


@pytest.mark.parametrize("command", [
    ["train", "--config", str(TINY_CONFIG)],
    ["bench", "--config", str(TINY_CONFIG)],
    ["study", "clipping", "--config", str(TINY_CONFIG)],
])
def test_train_bench_and_study_refuse_bf16_before_reading_data_or_writing(
        command, cpu_without_bf16, no_data_may_be_read, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    where = {"train": ["--run-dir", str(out)], "bench": [], "study": ["--out", str(out)]}[command[0]]
    code = cli.main([*command, *where, "--set", "train.precision=bf16"])
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert err.startswith("error: train.precision=bf16:") and "AVX2" in err and len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []  # no run folder, no study folder, nothing


@pytest.mark.parametrize("config", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_runs_in_a_precision_this_cpu_has(config):
    """The CPU quick start once asked for bf16 explicitly and died on AVX2 CPUs: no config may do that."""
    cfg = load_config(config)
    if cfg.train.device == "cuda":
        pytest.skip("a GPU config")
    assert cfg.train.precision in ("auto", "fp32"), f"{config.name}: let the machine choose bf16 (auto)"
    assert device.resolve_precision(cfg.train.precision, CPU) in ("fp32", "bf16")


@pytest.mark.slow
@pytest.mark.parametrize("precision", supported_precisions())
def test_a_training_step_a_decode_and_a_bench_run_in_every_precision_this_cpu_has(precision, tmp_path, capsys):
    code = cli.main(["bench", "--config", str(TINY_CONFIG), "--warmup-steps", "1", "--steps", "2",
                     "--decode-sentences", "5", "--json", str(tmp_path / "bench.json"),
                     "--set", f"train.precision={precision}"])
    assert code == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["train_tokens_per_sec"] > 0 and report["greedy_sentences_per_sec"] > 0
    assert report["beam5_sentences_per_sec"] > 0
    expected = device.resolve_precision(precision, CPU)
    assert report["precision"] == expected and report["precision_choice"].startswith(expected)
    assert report["products"] and report["cpu"].startswith(device.cpu_name())


def test_the_start_up_log_says_which_precision_and_why(tmp_path, caplog):
    from nmt.distributed import World
    from nmt.train import Trainer

    cfg = load_config(TINY_CONFIG, ["train.precision=auto", "data.test_split=null"])
    with caplog.at_level(logging.INFO):
        Trainer(cfg, Path(tmp_path), World(), None)
    line = next(r.getMessage() for r in caplog.records if "parameters; device" in r.getMessage())
    assert f"precision {device.resolve_precision('auto', CPU)} (auto: {device.cpu_name()}" in line


def test_bf16_decoding_where_the_cpu_lacks_it_runs_with_one_warning(tiny_run, cpu_without_bf16, tmp_path, caplog):
    device._warn_once.cache_clear()
    source = tmp_path / "in.en"
    source.write_text("a small test\n\nanother line\n", encoding="utf-8")
    out = tmp_path / "out.de"
    with caplog.at_level(logging.WARNING):
        code = cli.main(["translate", "--checkpoint", str(tiny_run / "checkpoints" / "best.pt"), "--input",
                         str(source), "--output", str(out), "--precision", "bf16"])
    assert code == 0
    assert len(out.read_text(encoding="utf-8").splitlines()) == 3
    assert sum("--precision=bf16" in r.getMessage() for r in caplog.records) == 1


#: torch, oneDNN and MKL held to their AVX2 kernels, as on an AVX2-only CPU: the quick start once died inside
#: oneDNN (no bf16 LSTM) under exactly these
AVX2_KERNELS = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


@pytest.mark.slow
def test_on_avx2_kernels_auto_trains_and_decodes_in_fp32_and_bf16_is_refused(monkeypatch, tmp_path):
    """The real counterpart of the stand-in above, on any x86 CPU with AVX2: fresh processes whose libraries
    see only AVX2."""
    if device.cpu_capability() not in ("AVX2", "AVX512"):
        pytest.skip("not an x86 CPU with AVX2")
    for name, value in AVX2_KERNELS.items():
        monkeypatch.setenv(name, value)
    report_file = tmp_path / "bench.json"
    result = run_nmt("bench", "--config", str(TINY_CONFIG), "--warmup-steps", "1", "--steps", "2",
                     "--decode-sentences", "5", "--json", str(report_file), "--set", "train.precision=auto")
    assert result.returncode == 0, result.stderr
    report = json.loads(report_file.read_text())
    assert report["precision"] == "fp32" and "AVX2" in report["precision_choice"]
    assert report["train_tokens_per_sec"] > 0 and report["beam5_sentences_per_sec"] > 0
    run_dir = tmp_path / "run"
    result = run_nmt("train", "--config", str(TINY_CONFIG), "--run-dir", str(run_dir), "--set", "train.precision=bf16")
    assert result.returncode == 1 and not run_dir.exists()
    error = result.stderr.strip()
    assert error.startswith("error: train.precision=bf16:") and "AVX2" in error and len(error.splitlines()) == 1


@pytest.mark.slow
def test_on_avx2_kernels_an_explicit_bf16_decode_runs_with_one_warning(tiny_run, monkeypatch, tmp_path):
    """oneDNN has no bf16 LSTM there: the encoder must run in float32 under bf16 autocast, not die."""
    if device.cpu_capability() not in ("AVX2", "AVX512"):
        pytest.skip("not an x86 CPU with AVX2")
    for name, value in AVX2_KERNELS.items():
        monkeypatch.setenv(name, value)
    source, out = tmp_path / "in.en", tmp_path / "out.de"
    source.write_text("a small test\n\nanother line\n", encoding="utf-8")
    for beam in ("1", "5"):
        result = run_nmt("translate", "--checkpoint", str(tiny_run / "checkpoints" / "best.pt"), "--input",
                         str(source), "--output", str(out), "--precision", "bf16", "--beam-size", beam)
        assert result.returncode == 0, result.stderr
        assert len(out.read_text(encoding="utf-8").splitlines()) == 3
        assert result.stderr.count("--precision=bf16 on a CPU without native bfloat16") == 1
        out.unlink()


ZEN5_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 26
model\t\t: 2
model name\t: AMD EPYC
flags\t\t: fpu avx2 avx512f avx512_bf16

processor\t: 1
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC
"""


def test_the_cpu_is_named_by_family_and_model_where_the_name_alone_is_shared():
    """Zen 3, 4 and 5 virtual machines all call themselves 'AMD EPYC'; the product routes' cache and the bench
    report must still tell them apart. The first processor's block is the one read."""
    assert device._name_from_cpuinfo(ZEN5_CPUINFO) == "AMD EPYC (family 26, model 2)"
    assert device._name_from_cpuinfo("model name\t: Some CPU\n") == "Some CPU"
    assert device._name_from_cpuinfo("processor\t: 0\nmodel name\t: X\ncpu family\t: ?\nmodel\t: 1\n") == "X"
    with pytest.raises(ValueError):
        device._name_from_cpuinfo("processor\t: 0\nBogoMIPS\t: 50.00\n")


def test_the_cached_product_routes_are_keyed_by_the_cpus_family_and_model(monkeypatch):
    from nmt.model import gemm

    monkeypatch.setattr(gemm, "cpu_name", lambda: device._name_from_cpuinfo(ZEN5_CPUINFO))
    zen5 = gemm._machine_key()
    monkeypatch.setattr(gemm, "cpu_name", lambda: device._name_from_cpuinfo(ZEN5_CPUINFO.replace("26", "25", 1)))
    assert gemm._machine_key() != zen5 and "family 26, model 2" in zen5


def test_version_names_the_versions_and_what_auto_chooses_here(cpu_without_bf16, capsys):
    """`nmt --version` is a user's first check in a container: no command needed, and the device and precision
    it names are the ones `auto` then trains with."""
    import nmt

    with pytest.raises(SystemExit) as stop:
        cli.main(["--version"])
    assert stop.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"nmt {nmt.__version__}, torch {torch.__version__}, Python ")
    chosen = device.resolve_device("auto")
    assert lines[1].startswith(f"device (train.device auto): {chosen.type}, ")
    if chosen.type == "cpu":
        assert "AVX2, no bfloat16" in lines[1] and "flags " in lines[1]
    assert lines[2] == f"precision (train.precision auto): {device.resolve_precision('auto', chosen)}"
    assert lines[2].endswith("fp32") or chosen.type == "cuda"  # the stand-in CPU has no bf16


@pytest.mark.parametrize("millions, on, warned", [(42.7, "cpu", True), (4.3, "cpu", False), (42.7, "cuda", False)])
def test_a_model_sized_for_a_gpu_started_on_a_cpu_is_said_so_with_the_cpu_config(millions, on, warned, caplog):
    from types import SimpleNamespace

    from nmt.experiment import warn_if_sized_for_a_gpu

    model = SimpleNamespace(num_parameters=lambda: int(millions * 1e6))
    with caplog.at_level(logging.WARNING, logger="nmt"):
        warn_if_sized_for_a_gpu(SimpleNamespace(model=model, device=torch.device(on)))
    said = [r.getMessage() for r in caplog.records]
    assert bool(said) == warned
    if warned:
        assert len(said) == 1 and "42.7 M parameters" in said[0] and "configs/multi30k_en_de_cpu.yaml" in said[0]
        assert (ROOT / "configs" / "multi30k_en_de_cpu.yaml").is_file()
