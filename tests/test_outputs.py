"""An existing file is replaced only if nmt wrote it and nobody changed it since; a user's file needs
--overwrite. Running a command again replaces its own output without asking, in a folder moved or copied
since, and whatever happened to the cache."""

import json
import logging
import os
import shutil
import threading

import pytest

from nmt.errors import NMTError
from nmt.outputs import RECORD, check_output, write_text, written_by_nmt
from tests.conftest import DAMAGE, TINY_DATA, damage_file, run_nmt
from tests.test_errors import check_error


def test_a_users_file_is_refused_and_nmts_own_unchanged_file_is_replaced(tmp_path):
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
    with pytest.raises(NMTError, match="is where nmt records the files it wrote"):
        check_output(tmp_path / RECORD, overwrite=True)


@pytest.mark.parametrize("change", ["appended", "same size and time, other bytes"])
def test_a_file_nmt_wrote_and_the_user_changed_counts_as_the_users(tmp_path, change):
    path = tmp_path / "out.txt"
    write_text(path, "translation\n")
    stat = path.stat()
    if change == "appended":
        with open(path, "a") as handle:
            handle.write("my note\n")
    else:
        path.write_text("TRANSLATION\n")
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert not written_by_nmt(path)
    with pytest.raises(NMTError, match="already exists and nmt did not write it"):
        check_output(path)


def test_the_record_travels_with_the_folder_and_needs_no_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NMT_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "outputs"
    folder.mkdir()
    write_text(folder / "out.txt", "translation\n")
    (folder / "mine.txt").write_text("my notes\n")
    moved, copied = tmp_path / "moved", tmp_path / "copied"
    folder.rename(moved)
    shutil.copytree(moved, copied, copy_function=shutil.copyfile)  # new inodes and times, as `cp -r` gives
    monkeypatch.setenv("NMT_CACHE", str(tmp_path / "another cache"))
    for where in (moved, copied):
        assert written_by_nmt(where / "out.txt") and not written_by_nmt(where / "mine.txt")
        assert check_output(where / "out.txt") == where / "out.txt"
    assert not (tmp_path / "cache").exists() and not (tmp_path / "another cache").exists()


def test_the_record_forgets_deleted_files_and_keeps_every_concurrent_writers_entry(tmp_path):
    write_text(tmp_path / "gone.txt", "x\n")
    (tmp_path / "gone.txt").unlink()
    paths = [tmp_path / f"{i}.txt" for i in range(24)]
    writers = [threading.Thread(target=lambda group=paths[i::6]: [write_text(p, f"{p.name}\n") for p in group])
               for i in range(6)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    recorded = json.loads((tmp_path / RECORD).read_text())["files"]
    assert sorted(recorded) == sorted(p.name for p in paths)  # none lost, the deleted one forgotten
    assert all(written_by_nmt(p) for p in paths)
    assert not list(tmp_path.glob(".*.partial*"))


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_record_is_named_set_aside_and_written_again(tmp_path, caplog, damage):
    first = tmp_path / "first.txt"
    write_text(first, "x\n")
    record = tmp_path / RECORD
    bad = damage_file(record, damage, wrong_types={"files": {"first.txt": "not a list"}})
    path = tmp_path / "out.txt"
    with caplog.at_level(logging.WARNING):
        check_output(path)
        write_text(path, "translation\n")
    assert len(caplog.records) == 1 and caplog.records[0].getMessage().startswith(f"{record}: ")
    (aside,) = tmp_path.glob(f"{RECORD}.bad-*")
    assert aside.read_bytes() == bad  # set aside, not deleted
    assert list(json.loads(record.read_text())["files"]) == ["out.txt"]  # replaced by a good one
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
    copied = tmp_path / "copied run"
    shutil.copytree(run, copied, copy_function=shutil.copyfile)
    assert run_nmt("plot", str(copied)).returncode == 0  # a copied run replaces its own curves.png
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
