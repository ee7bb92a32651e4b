"""Every bad input: non-zero exit, one line on stderr naming the problem, no traceback, nothing overwritten."""

import shutil

import pytest

from tests.conftest import TINY_CONFIG, TINY_DATA, run_nmt


def check_error(result, *fragments):
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr
    message = lines[-1]
    assert message.startswith("error: ")
    for fragment in fragments:
        assert fragment in message, message


def train(tmp_path, *overrides, run_dir=None):
    args = ["train", "--config", str(TINY_CONFIG), "--run-dir", str(run_dir or tmp_path / "run")]
    for override in overrides:
        args += ["--set", override]
    return run_nmt(*args)


def corpus(tmp_path, **files):
    folder = tmp_path / "data"
    shutil.copytree(TINY_DATA, folder)
    for name, content in files.items():
        path = folder / name.replace("_", ".")
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return folder


def test_different_line_counts(tmp_path):
    folder = corpus(tmp_path, train_de="eins\nzwei\n")
    check_error(train(tmp_path, f"data.dataset={folder}"), "train.en has 500 lines", "train.de has 2")
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_invalid_utf8(tmp_path):
    text = (TINY_DATA / "train.de").read_bytes().split(b"\n")
    text[6] = b"caf\xe9"
    folder = corpus(tmp_path, train_de=b"\n".join(text))
    check_error(train(tmp_path, f"data.dataset={folder}"), "train.de:7: invalid UTF-8")


def test_empty_corpus(tmp_path):
    folder = corpus(tmp_path, train_en="\n\n", train_de="\n\n")
    check_error(train(tmp_path, f"data.dataset={folder}"), "no non-empty sentence pairs")


def test_filtering_empties_the_corpus_and_says_which_filter(tmp_path):
    check_error(train(tmp_path, "data.max_len=2"), "filtering dropped every pair", "data.max_len=2")


def test_missing_language(tmp_path):
    check_error(train(tmp_path, "data.tgt_lang=fr"), "no language 'fr'", "it has de, en")


def test_missing_language_in_a_hub_layout_folder(tmp_path):
    folder = tmp_path / "hub"
    folder.mkdir()
    for split in ("train", "validation", "test"):
        (folder / f"{split}.jsonl").write_text('{"en": "a", "de": "b"}\n', encoding="utf-8")
    check_error(train(tmp_path, f"data.dataset={folder}", "data.tgt_lang=fr", "data.valid_split=validation"),
                "no language 'fr'", "en, de")


def test_dataset_not_found_says_offline(tmp_path):
    check_error(train(tmp_path, "data.dataset=no-such-user/no-such-dataset"), "no-such-user/no-such-dataset",
                "offline")


def test_missing_split_lists_splits(tmp_path):
    check_error(train(tmp_path, "data.test_split=test2030"), "no split 'test2030'", "test, train, valid")


def test_unknown_config_key(tmp_path):
    check_error(train(tmp_path, "train.learning_rate=1"), "unknown key 'train.learning_rate'")


def test_wrong_config_type(tmp_path):
    check_error(train(tmp_path, "train.batch_sentences=many"), "train.batch_sentences", "expected an integer")


def test_not_a_checkpoint(tmp_path):
    fake = tmp_path / "fake.pt"
    fake.write_text("hello")
    check_error(run_nmt("translate", "--checkpoint", str(fake), "--input", str(TINY_DATA / "test.en")),
                "fake.pt", "not a readable checkpoint (truncated, or not a checkpoint at all)", "checkpoints/ folder")


def test_checkpoint_from_an_incompatible_version(tmp_path, tiny_run):
    import torch

    payload = torch.load(tiny_run / "checkpoints" / "best.pt", weights_only=True)
    payload["version"] = 99
    old = tmp_path / "old.pt"
    torch.save(payload, old)
    check_error(run_nmt("translate", "--checkpoint", str(old), "--input", str(TINY_DATA / "test.en")),
                "format version 99")


def test_resume_without_a_checkpoint(tmp_path):
    (tmp_path / "empty").mkdir()
    check_error(run_nmt("train", "--resume", "--run-dir", str(tmp_path / "empty")), "no checkpoint to resume")


def test_run_dir_holding_another_run_is_not_overwritten(tmp_path, tiny_run):
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    check_error(train(tmp_path, run_dir=run_dir), "already holds a run", "--resume")
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


def test_debug_shows_the_traceback(tmp_path):
    result = run_nmt("--debug", "train", "--config", str(TINY_CONFIG), "--set", "train.learning_rate=1",
                     "--run-dir", str(tmp_path / "run"))
    assert result.returncode != 0 and "Traceback" in result.stderr


@pytest.mark.parametrize("subcommand", ["translate", "evaluate"])
def test_output_is_not_left_half_written(tmp_path, tiny_run, subcommand):
    out = tmp_path / "out.txt"
    out.write_text("precious\n")
    bad_input = tmp_path / "bad.en"
    bad_input.write_bytes(b"ok\n\xff\xfe\n")
    if subcommand == "translate":
        result = run_nmt("translate", "--checkpoint", str(tiny_run / "checkpoints" / "best.pt"), "--input",
                         str(bad_input), "--output", str(out), "--overwrite")  # allowed, yet kept whole
        check_error(result, "bad.en:2: invalid UTF-8")
    else:
        result = run_nmt("evaluate", "--hyp", str(bad_input), "--ref", str(TINY_DATA / "test.de"))
        check_error(result, "bad.en:2: invalid UTF-8")
    assert out.read_text() == "precious\n"
