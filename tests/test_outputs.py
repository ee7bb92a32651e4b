"""An existing file is replaced only if nmt wrote it and nobody changed it since; a user's file needs
--overwrite. Running a command again replaces its own output without asking."""

import json
import logging
import os
import shutil

import pytest

from nmt import outputs
from nmt.errors import NMTError
from nmt.outputs import check_output, write_text, written_by_nmt
from tests.conftest import DAMAGE, TINY_DATA, damage_file, run_nmt
from tests.test_errors import check_error


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A cache of this test's own, so the record starts empty."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("NMT_CACHE", str(folder))
    return folder


def test_a_users_file_is_refused_and_nmts_own_unchanged_file_is_replaced(tmp_path, cache):
    users = tmp_path / "notes.txt"
    users.write_text("mine\n")
    with pytest.raises(NMTError, match=r"^--output .*notes.txt: already exists and nmt did not write it .*--overwrite"):
        check_output(users)
    assert check_output(users, overwrite=True) == users

    ours = tmp_path / "out.txt"
    write_text(ours, "first\n")
    assert written_by_nmt(ours)
    assert check_output(ours) == ours
    write_text(ours, "second, same length\n")  # replacing it records the new file
    assert written_by_nmt(ours) and check_output(ours) == ours


@pytest.mark.parametrize("change", ["appended", "same size, later time", "replaced by a copy"])
def test_a_file_nmt_wrote_and_the_user_changed_counts_as_the_users(tmp_path, cache, change):
    path = tmp_path / "out.txt"
    write_text(path, "translation\n")
    stat = path.stat()
    if change == "appended":
        with open(path, "a") as handle:
            handle.write("my note\n")
    elif change == "same size, later time":
        path.write_text("TRANSLATION\n")
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    else:  # a new file (another inode) with the same bytes and the same times
        copy = tmp_path / "copy.txt"
        shutil.copy2(path, copy)
        os.replace(copy, path)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert not written_by_nmt(path)
    with pytest.raises(NMTError, match="already exists and nmt did not write it"):
        check_output(path)


def test_the_record_forgets_deleted_files_keeps_the_newest_and_survives_damage(tmp_path, cache, monkeypatch):
    monkeypatch.setattr(outputs, "MAX_RECORDED", 3)
    paths = [tmp_path / f"{i}.txt" for i in range(5)]
    for path in paths[:2]:
        write_text(path, "x\n")
    paths[0].unlink()
    for path in paths[2:]:
        write_text(path, "x\n")
    recorded = json.loads((cache / "written.json").read_text())["files"]
    assert list(recorded) == [str(p.resolve()) for p in paths[2:]]  # 0 deleted; 1 the oldest beyond 3
    assert not written_by_nmt(paths[1]) and all(written_by_nmt(p) for p in paths[2:])

    (cache / "written.json").write_text("{not json")
    assert not written_by_nmt(paths[4])  # a damaged record protects every file ...
    write_text(paths[4], "y\n")
    assert written_by_nmt(paths[4])  # ... and is written again whole


def test_an_unwritable_cache_still_writes_the_output_says_so_then_and_the_next_run_asks_for_overwrite(
        tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "a file"
    blocker.write_text("")
    monkeypatch.setenv("NMT_CACHE", str(blocker / "cache"))  # a folder under a file: cannot be created
    monkeypatch.setattr(outputs, "_written_here", {})
    path = tmp_path / "out.txt"
    with caplog.at_level(logging.WARNING):
        write_text(path, "translation\n")
    assert path.read_text() == "translation\n"
    (warning,) = caplog.records  # one line, at the time of writing
    assert warning.levelno == logging.WARNING and str(blocker / "cache" / "written.json") in warning.getMessage()
    assert "running this command again will ask for --overwrite" in warning.getMessage()
    assert check_output(path) == path  # this process still knows its own file
    monkeypatch.setattr(outputs, "_written_here", {})  # the next run
    with pytest.raises(NMTError, match="--overwrite"):
        check_output(path)


def good_record_files(cache) -> dict:
    files = json.loads((cache / "written.json").read_text())["files"]
    assert all(isinstance(identity, list) and len(identity) == 3 for identity in files.values())
    return files


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_record_is_named_set_aside_and_written_again(tmp_path, cache, caplog, damage):
    first = tmp_path / "first.txt"
    write_text(first, "x\n")
    record = cache / "written.json"
    bad = damage_file(record, damage, wrong_types={"version": 1, "files": {str(first.resolve()): "not a list"}})
    path = tmp_path / "out.txt"
    with caplog.at_level(logging.WARNING):
        check_output(path)
        write_text(path, "translation\n")
    assert len(caplog.records) == 1 and caplog.records[0].getMessage().startswith(f"{record}: ")
    (aside,) = cache.glob("written.json.bad-*")
    assert aside.read_bytes() == bad  # set aside, not deleted
    assert list(good_record_files(cache)) == [str(path.resolve())]  # replaced by a good one
    assert written_by_nmt(path) and not written_by_nmt(first)  # the lost entry: --overwrite, the safe side


def test_translate_plot_and_evaluate_refuse_a_users_file_and_replace_their_own(tiny_run, tmp_path):
    checkpoint = tiny_run / "checkpoints" / "best.pt"
    output = tmp_path / "out.de"
    output.write_text("my own translation\n", encoding="utf-8")
    translate = ["translate", "--checkpoint", str(checkpoint), "--input", str(TINY_DATA / "test.en"),
                 "--output", str(output)]
    check_error(run_nmt(*translate), f"--output {output}: already exists and nmt did not write it")
    assert output.read_text(encoding="utf-8") == "my own translation\n"
    assert run_nmt(*translate, "--overwrite").returncode == 0
    translated = output.read_text(encoding="utf-8")
    assert translated == (tiny_run / "test.hyp.de").read_text(encoding="utf-8")
    assert run_nmt(*translate).returncode == 0  # its own output, unchanged: replaced without asking
    with open(output, "a", encoding="utf-8") as handle:
        handle.write("an edit\n")
    check_error(run_nmt(*translate), "already exists and nmt did not write it")

    plots = tmp_path / "plots"
    plots.mkdir()
    (plots / "attention_0002.png").write_bytes(b"a user's picture")
    check_error(run_nmt(*translate[:-2], "--attention-plots", str(plots)),
                f"--attention-plots {plots / 'attention_0002.png'}: already exists")
    assert sorted(p.name for p in plots.iterdir()) == ["attention_0002.png"]  # refused before any was drawn

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("curves.png"))
    assert run_nmt("plot", str(run)).returncode == 0
    assert run_nmt("plot", str(run)).returncode == 0
    picture = tmp_path / "mine.png"
    picture.write_bytes(b"a user's picture")
    check_error(run_nmt("plot", str(run), "--out", str(picture)), "--out", "--overwrite")
    assert picture.read_bytes() == b"a user's picture"
    assert run_nmt("plot", str(run), "--out", str(tmp_path / "curves"), "--debug").returncode == 0  # no suffix
    assert (tmp_path / "curves").read_bytes().startswith(b"\x89PNG")
    check_error(run_nmt("plot", str(run), "--out", str(tmp_path / "curves.txt")), "give a .png, .svg, .pdf or .jpg")

    scores = tmp_path / "scores"
    scores.mkdir()
    (scores / "test.best.beam1.hyp.de").write_text("my hypotheses\n", encoding="utf-8")
    evaluate = ["evaluate", "--checkpoint", str(run / "checkpoints" / "best.pt"), "--dataset", str(TINY_DATA),
                "--beam-size", "1", "--out", str(scores)]
    check_error(run_nmt(*evaluate), "test.best.beam1.hyp.de: already exists")
    assert sorted(p.name for p in scores.iterdir()) == ["test.best.beam1.hyp.de"]
    assert run_nmt(*evaluate, "--overwrite").returncode == 0
    assert run_nmt(*evaluate).returncode == 0  # both files are its own now
