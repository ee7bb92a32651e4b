"""Nothing a user types destroys a file or a run: outputs never replace inputs, one process per run
directory, a run killed at any moment resumes, every setting is range-checked, every error is one line."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from nmt.config import load_config
from nmt.errors import NMTError
from tests.conftest import ROOT, TINY_CONFIG, TINY_DATA, run_nmt
from tests.test_errors import check_error


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def tiny_checkpoint(tiny_run, tmp_path):
    """A private copy of the trained tiny checkpoint, so a test may try to destroy it."""
    path = tmp_path / "model.pt"
    shutil.copy(tiny_run / "checkpoints" / "best.pt", path)
    return path


@pytest.mark.parametrize("target", ["input", "checkpoint", "symlink", "missing folder", "folder"])
def test_translate_refuses_an_output_that_would_destroy_something(tiny_checkpoint, tmp_path, target):
    source = tmp_path / "in.en"
    source.write_text("a small test\n", encoding="utf-8")
    elsewhere = tmp_path / "precious.txt"
    elsewhere.write_text("keep me\n")
    (tmp_path / "link.txt").symlink_to(elsewhere)
    output = {"input": source, "checkpoint": tiny_checkpoint, "symlink": tmp_path / "link.txt",
              "missing folder": tmp_path / "nowhere" / "out.de", "folder": tmp_path}[target]
    before = {p: digest(p) for p in (source, tiny_checkpoint, elsewhere)}
    result = run_nmt("translate", "--checkpoint", str(tiny_checkpoint), "--input", str(source),
                     "--output", str(output))
    expected = {"input": "also a file this command reads", "checkpoint": "also a file this command reads",
                "symlink": "is a symbolic link", "missing folder": "does not exist", "folder": "is a folder"}[target]
    check_error(result, f"--output {output}", expected)
    assert {p: digest(p) for p in before} == before


def test_translate_refuses_its_output_before_reading_any_input(tiny_checkpoint, tmp_path):
    """A user's file at --output is named before any work: here the input does not even exist yet."""
    users = tmp_path / "out.de"
    users.write_text("mine\n")
    result = run_nmt("translate", "--checkpoint", str(tiny_checkpoint), "--input", str(tmp_path / "missing.en"),
                     "--output", str(users))
    check_error(result, f"--output {users}", "--overwrite")
    assert users.read_text() == "mine\n"


@pytest.mark.parametrize("flag, value", [("--beam-size", "0"), ("--max-len-ratio", "0"), ("--max-len-ratio", "-1"),
                                         ("--max-len-ratio", "1000"), ("--max-len-ratio", "nan"),
                                         ("--length-penalty", "-0.5"), ("--length-penalty", "inf"),
                                         ("--batch-tokens", "0"), ("--nbest", "0")])
def test_translate_flags_out_of_range_are_refused_not_replaced(tiny_checkpoint, flag, value):
    check_error(run_nmt("translate", "--checkpoint", str(tiny_checkpoint), "--input", str(TINY_DATA / "test.en"),
                        flag, value), f"{flag} {value}: must be")


@pytest.mark.parametrize("key, value", [
    ("train.max_grad_norm", "-1"), ("train.max_grad_norm", "0"), ("train.max_grad_norm", "nan"),
    ("train.lr", "0"), ("train.lr", "inf"), ("model.dropout", "1.0"), ("model.dropout", "-0.1"),
    ("train.batch_sentences", "0"), ("train.batch_tokens", "-5"), ("model.hidden_size", "0"),
    ("model.layers", "0"), ("tokenizer.vocab_size", "3"), ("decode.beam_size", "0"),
    ("decode.max_len_ratio", "0"), ("train.label_smoothing", "1.5"), ("train.save_every_minutes", "0"),
    ("data.max_len", "0"), ("train.patience", "0"), ("decode.max_len_ratio", "1e30"),
    ("decode.length_penalty", "1e300"),
])
def test_every_setting_is_range_checked_naming_key_value_and_range(key, value):
    with pytest.raises(NMTError) as error:
        load_config(TINY_CONFIG, [f"{key}={value}"])
    message = str(error.value)
    assert f"{key}=" in message and "must be" in message
    assert message.startswith("--set: ") and "\n" not in message  # the bad value came from --set, not the file


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")
def test_asking_for_a_gpu_that_is_not_there_names_the_option_the_command_has(tiny_checkpoint, tmp_path):
    check_error(run_nmt("translate", "--checkpoint", str(tiny_checkpoint), "--device", "cuda"),
                "--device cuda but no CUDA GPU is visible; use --device cpu or auto")
    check_error(run_nmt("train", "--config", str(TINY_CONFIG), "--set", "train.device=cuda",
                        "--run-dir", str(tmp_path / "run")),
                "train.device=cuda but no CUDA GPU is visible; use --set train.device=cpu or auto")


def test_tied_embeddings_of_different_sizes_are_refused_before_any_data_is_read(tmp_path):
    run_dir = tmp_path / "run"
    check_error(run_nmt("train", "--config", str(TINY_CONFIG), "--set", "model.tie_embeddings=true",
                        "--set", "model.emb_dim=16", "--set", "model.hidden_size=32", "--run-dir", str(run_dir)),
                "model.tie_embeddings=true needs model.emb_dim == model.hidden_size (now 16 and 32)")
    assert not run_dir.exists()


def test_an_empty_config_file_or_a_folder_is_an_error(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    check_error(run_nmt("train", "--config", str(empty)), "empty.yaml: the file is empty")
    check_error(run_nmt("train", "--config", str(tmp_path)), "is a folder")


def test_a_run_dir_that_is_a_file_or_holds_a_users_files_is_refused(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("mine\n")
    check_error(run_nmt("train", "--config", str(TINY_CONFIG), "--run-dir", str(a_file)), "is a file")
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "config.yaml").write_text("my own notes\n")
    check_error(run_nmt("train", "--config", str(TINY_CONFIG), "--run-dir", str(folder)),
                "holds config.yaml, which nmt did not write")
    assert (folder / "config.yaml").read_text() == "my own notes\n"


def test_a_text_value_that_is_a_number_names_the_file_and_row(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    rows = [{"en": "a house", "de": "ein Haus"}, {"en": 5, "de": "fünf"}]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (folder / "validation.jsonl").write_text(json.dumps(rows[0]) + "\n", encoding="utf-8")
    result = run_nmt("train", "--config", str(TINY_CONFIG), "--set", f"data.dataset={folder}",
                     "--set", "data.valid_split=validation", "--set", "data.test_split=null",
                     "--run-dir", str(tmp_path / "run"))
    check_error(result, "train.jsonl, row 2", "is a int, not text")
    assert not (tmp_path / "run").exists()  # nothing written, not even an empty run directory


def test_a_cache_folder_under_a_file_is_one_line(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    env = {**os.environ, "NMT_CACHE": str(blocker / "cache")}
    result = subprocess.run([sys.executable, "-m", "nmt", "train", "--config", str(TINY_CONFIG), "--run-dir",
                             str(tmp_path / "run")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    check_error(result, f"cannot create {blocker / 'cache' / 'prepared'}", "set NMT_CACHE")


def test_a_checkpoint_without_its_config_is_one_line(tiny_checkpoint, tmp_path):
    import torch

    payload = torch.load(tiny_checkpoint, weights_only=True)
    del payload["config"]
    torch.save(payload, tiny_checkpoint)
    check_error(run_nmt("translate", "--checkpoint", str(tiny_checkpoint), "--input", str(TINY_DATA / "test.en")),
                "an incomplete nmt checkpoint (no config)")


def test_scoring_two_empty_files_is_one_line(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    check_error(run_nmt("evaluate", "--hyp", str(empty), "--ref", str(empty)), "no lines to score")


def test_a_corrupt_cached_sentencepiece_model_is_rebuilt(tmp_path, monkeypatch, caplog):
    from nmt.config import TokenizerConfig
    from nmt.tokenizer import cache_dir
    from tests.conftest import train_tokenizer

    monkeypatch.setenv("NMT_CACHE", str(tmp_path / "cache"))
    texts = [f"words and more words {i}" for i in range(100)]
    good = train_tokenizer(TokenizerConfig(vocab_size=40), texts, texts)
    (cached,) = cache_dir().glob("*.model")
    cached.write_bytes(b"not a model")
    again = train_tokenizer(TokenizerConfig(vocab_size=40), texts, texts)
    assert again.src.encode(texts) == good.src.encode(texts)  # retrained on the same text and settings
    assert cached.read_bytes() == again.src.model_proto  # and the cache holds a sound model again
    assert "corrupt" in caplog.text


def start_training(run_dir, *overrides) -> subprocess.Popen:
    args = [sys.executable, "-m", "nmt", "train", "--config", str(TINY_CONFIG), "--run-dir", str(run_dir)]
    for override in ("train.max_epochs=1000", "train.log_every=1", *overrides):
        args += ["--set", override]
    return subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_for(condition, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def steps_logged(run_dir) -> int:
    path = run_dir / "metrics.jsonl"
    return sum(1 for line in path.read_text().splitlines() if '"loss"' in line) if path.exists() else 0


@pytest.mark.slow
def test_one_process_per_run_directory_and_a_killed_holder_does_not_block(tmp_path):
    run_dir = tmp_path / "run"
    first = start_training(run_dir)
    try:
        wait_for(lambda: steps_logged(run_dir) >= 3)
        second = run_nmt("train", "--resume", "--run-dir", str(run_dir))
        check_error(second, f"another nmt process (pid {first.pid})")
        fresh = run_nmt("train", "--config", str(TINY_CONFIG), "--run-dir", str(run_dir))
        assert fresh.returncode != 0
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    resumed = run_nmt("train", "--resume", "--run-dir", str(run_dir), "--set", "train.max_epochs=2")
    assert resumed.returncode == 0, resumed.stderr


@pytest.mark.slow
def test_a_run_killed_before_its_first_checkpoint_resumes_from_step_0_or_starts_again(tmp_path):
    run_dir = tmp_path / "run"
    first = start_training(run_dir, "train.save_every_minutes=null", "train.max_epochs=1000")
    wait_for(lambda: steps_logged(run_dir) >= 2)
    first.send_signal(signal.SIGKILL)
    first.wait()
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # as if killed before the epoch's save
    resumed = run_nmt("train", "--resume", "--run-dir", str(run_dir), "--set", "train.max_steps=4")
    assert resumed.returncode == 0, resumed.stderr
    assert "starting it from step 0" in resumed.stderr
    assert json.loads((run_dir / "results.json").read_text())["steps"] == 4
    shutil.rmtree(run_dir / "checkpoints")
    (run_dir / "results.json").unlink()
    again = run_nmt("train", "--config", str(TINY_CONFIG), "--run-dir", str(run_dir), "--set", "train.max_steps=3",
                    "--set", "train.log_every=1")
    assert again.returncode == 0, again.stderr
    records = map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
    assert [r["step"] for r in records if "loss" in r and "event" not in r] == [1, 2, 3]  # the old steps are gone


@pytest.mark.slow
def test_resume_takes_the_checkpoint_with_the_most_steps_and_refuses_changes_that_define_the_run(tmp_path):
    run_dir = tmp_path / "run"
    result = run_nmt("train", "--config", str(TINY_CONFIG), "--run-dir", str(run_dir), "--set", "train.max_steps=10",
                     "--set", "data.test_split=null")
    assert result.returncode == 0, result.stderr
    early = tmp_path / "step10.pt"
    shutil.copy(run_dir / "checkpoints" / "last.pt", early)
    result = run_nmt("train", "--resume", "--run-dir", str(run_dir), "--set", "train.max_steps=20")
    assert result.returncode == 0, result.stderr
    shutil.copy(early, run_dir / "checkpoints" / "best.pt")  # an older step in the newer file
    os.utime(run_dir / "checkpoints" / "best.pt")
    refused = run_nmt("train", "--resume", "--run-dir", str(run_dir), "--set", "model.hidden_size=64",
                      "--set", "train.batch_sentences=7")
    check_error(refused, "--resume cannot change model.hidden_size, train.batch_sentences")
    result = run_nmt("train", "--resume", "--run-dir", str(run_dir), "--set", "train.max_steps=25")
    assert result.returncode == 0, result.stderr
    assert "last.pt at step 20 (also found: best.pt at step 10)" in result.stderr
    assert json.loads((run_dir / "results.json").read_text())["steps"] == 25
    assert not list(run_dir.rglob("*.partial*"))


def test_a_run_folder_marked_the_old_way_is_still_nmts(tmp_path):
    """Runs made before the per-folder record carry a `.nmt-run` marker: still recognised as nmt's own."""
    from nmt.run_dir import check_new_run_folder

    old = tmp_path / "old_run"
    old.mkdir()
    (old / "config.yaml").write_text("model: {}\n")
    with pytest.raises(NMTError, match="config.yaml, which nmt did not write"):
        check_new_run_folder(old)
    (old / ".nmt-run").write_text("")
    check_new_run_folder(old)  # killed before its first checkpoint: started again
    (old / "checkpoints").mkdir()
    (old / "checkpoints" / "last.pt").write_bytes(b"")
    with pytest.raises(NMTError, match="--resume"):
        check_new_run_folder(old)
