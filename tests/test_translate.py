import subprocess
import sys

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from nmt.cli import main
from tests.conftest import ROOT, TINY_DATA, run_nmt


def translate(checkpoint, lines_text: str, tmp_path, *extra) -> str:
    source = tmp_path / "in.txt"
    source.write_bytes(lines_text.encode("utf-8"))
    target = tmp_path / "out.txt"
    assert main(["translate", "--checkpoint", str(checkpoint), "--input", str(source), "--output", str(target),
                 "--device", "cpu", *extra]) == 0
    return target.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def best(tiny_run):
    return tiny_run / "checkpoints" / "best.pt"


def test_translates_the_test_set_like_training_did(tiny_run, best, tmp_path):
    out = translate(best, (TINY_DATA / "test.en").read_text(encoding="utf-8"), tmp_path)
    assert out == (tiny_run / "test.hyp.de").read_text(encoding="utf-8")


def test_blank_lines_long_lines_and_order(best, tmp_path):
    lines = ["The dog sees the cat .", "", "The old man likes the red ball .", "   ",
             " ".join(["The dog sees the cat ."] * 80), "The cat sees the dog ."]
    out = translate(best, "\n".join(lines) + "\n", tmp_path, "--beam-size", "2")
    rows = out.split("\n")
    assert rows[-1] == "" and len(rows) - 1 == len(lines)
    assert rows[1] == "" and rows[3] == ""
    assert rows[0].startswith("Der Hund sieht die Katze")
    assert rows[5].startswith("Die Katze sieht den Hund")


def test_missing_final_newline_and_crlf(best, tmp_path):
    out = translate(best, "The dog sees the cat .\r\nThe cat sees the dog .", tmp_path)
    assert out.count("\n") == 2


def test_nbest_format(best, tmp_path):
    out = translate(best, "The dog sees the cat .\n\nThe cat sees the dog .\n", tmp_path, "--beam-size", "3",
                    "--nbest", "3").split("\n")[:-1]
    assert len(out) == 9
    scores = [float(row.split("\t")[0]) for row in out[:3]]
    assert scores == sorted(scores, reverse=True)
    assert out[0].split("\t")[1].startswith("Der Hund sieht die Katze")


def test_stdin_to_stdout(best):
    result = subprocess.run([sys.executable, "-m", "nmt", "translate", "--checkpoint", str(best), "--device", "cpu"],
                            input="The dog sees the cat .\n\n", capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[1:] == ["", ""]


@pytest.mark.parametrize("source", ["file", "stdin"])
def test_a_long_input_is_read_and_written_a_chunk_at_a_time_with_the_same_lines(best, tmp_path, monkeypatch, capsys,
                                                                               source):
    """Memory stays flat however long the input: at most CHUNK_LINES lines are decoded at once, and the output
    is the one a single chunk gives, line for line, n-best included."""
    import io

    from nmt.cli import translate as command
    from nmt.translator import Translator

    lines = (TINY_DATA / "test.en").read_text(encoding="utf-8").splitlines()[:23]
    lines[4] = lines[9] = ""  # a blank line inside a chunk and one at a chunk's end
    text = "\n".join(lines) + "\n"
    whole = translate(best, text, tmp_path, "--nbest", "2")
    decoded, translate_ids = [], Translator.translate_ids

    def counting(self, sources, **options):
        decoded.append(len(sources))
        return translate_ids(self, sources, **options)

    monkeypatch.setattr(command, "CHUNK_LINES", 5)
    monkeypatch.setattr(Translator, "translate_ids", counting)
    if source == "file":
        assert translate(best, text, tmp_path, "--nbest", "2") == whole
    else:
        stdin = io.TextIOWrapper(io.BytesIO(text.encode("utf-8")), encoding="utf-8")
        monkeypatch.setattr(sys, "stdin", stdin)
        assert main(["translate", "--checkpoint", str(best), "--nbest", "2", "--device", "cpu"]) == 0
        assert capsys.readouterr().out == whole
    assert max(decoded) <= 5 and sum(decoded) == len(lines) and whole.count("\n") == 2 * len(lines)


def test_attention_plots(best, tmp_path):
    plots = tmp_path / "plots"
    translate(best, "The dog sees the cat .\nThe old horse pulls the car .\n", tmp_path, "--attention-plots",
              str(plots), "--plot-first", "1")
    assert sorted(p.name for p in plots.iterdir()) == [".nmt-outputs.json", "attention_0001.png"]  # and the record
    assert (plots / "attention_0001.png").read_bytes()[:4] == b"\x89PNG"


LINE = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\n"), max_size=60) | st.sampled_from(
    ["", "مرحبا بالعالم", "🙂🐶 emoji", "\t\x00\x07 control", "x" * 3000, "The dog sees the cat ."])


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(LINE, max_size=6), final_newline=st.booleans())
@example(lines=[""], final_newline=True)  # a file holding one empty line once came back empty
def test_any_unicode_keeps_one_output_line_per_input_line(best, tmp_path, lines, final_newline):
    text = "\n".join(lines) + ("\n" if final_newline and lines else "")
    out = translate(best, text, tmp_path)
    expected = len(text.split("\n")) - (1 if text.endswith("\n") else 0) if text else 0
    assert out.count("\n") == expected
    for line, translation in zip(text.split("\n"), out.split("\n")):
        if not line.strip():
            assert translation == ""


def test_checkpoint_alone_is_enough_to_translate(best, tmp_path):
    """The sentencepiece model and config travel inside the checkpoint."""
    lonely = tmp_path / "elsewhere" / "model.pt"
    lonely.parent.mkdir()
    lonely.write_bytes(best.read_bytes())
    assert translate(lonely, "The dog sees the cat .\n", tmp_path).startswith("Der Hund")


def test_evaluate_with_checkpoint_matches_training_score(tiny_run, best, tmp_path):
    import json

    result = run_nmt("evaluate", "--checkpoint", str(best), "--dataset", str(TINY_DATA), "--split", "test",
                     "--out", str(tmp_path / "new" / "folder"), "--json", "--device", "cpu")
    assert result.returncode == 0, result.stderr  # a new --out folder is created
    scores = json.loads(result.stdout)
    assert scores["bleu"] == json.loads((tiny_run / "results.json").read_text())["test_bleu"]
    hypotheses = tmp_path / "new" / "folder" / "test.best.beam3.hyp.de"  # tiny.yaml: beam 3
    assert hypotheses.read_text() == (tiny_run / "test.hyp.de").read_text()
    assert torch.load(best, weights_only=True)["format"] == "nmt-checkpoint"


def test_evaluate_beside_the_run_leaves_the_runs_own_test_output_alone(tiny_run, tmp_path):
    import json
    import shutil

    run = shutil.copytree(tiny_run, tmp_path / "run")
    before = {name: (run / name).read_bytes() for name in ("test.hyp.de", "results.json")}
    result = run_nmt("evaluate", "--checkpoint", str(run / "checkpoints" / "best.pt"), "--dataset", str(TINY_DATA),
                     "--split", "test", "--beam-size", "1", "--json", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert {name: (run / name).read_bytes() for name in before} == before
    scores = json.loads((run / "test.best.beam1.scores.json").read_text())
    assert scores["beam_size"] == 1 and scores["hypotheses"] == str(run / "test.best.beam1.hyp.de")
    lines = [len((run / name).read_text().splitlines()) for name in ("test.best.beam1.hyp.de", "test.hyp.de")]
    assert lines[0] == lines[1]


def test_a_terminal_gets_each_line_translated_as_it_is_typed(best):
    """At a terminal, every typed line is answered before the next one is read."""
    import os
    import pty
    import select

    controller, terminal = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "nmt", "translate", "--checkpoint", str(best), "--device", "cpu"],
                               stdin=terminal, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT)
    os.close(terminal)
    try:
        answers = []
        for line in ("The dog sees the cat .", "The cat sees the dog ."):
            os.write(controller, (line + "\n").encode())
            ready, _, _ = select.select([process.stdout], [], [], 60)
            assert ready, "no answer while the terminal stays open"
            answers.append(process.stdout.readline().decode().strip())
        assert answers[0].startswith("Der Hund sieht die Katze")
        assert answers[1].startswith("Die Katze sieht den Hund")
    finally:
        os.write(controller, b"\x04")  # Ctrl-D: end of input
        process.wait(timeout=30)
        os.close(controller)


def test_lines_typed_at_a_terminal_with_an_output_file_go_to_that_file(best, tmp_path):
    """--output is never ignored: typed lines are read until Ctrl-D and written to the file."""
    import os
    import pty

    controller, terminal = pty.openpty()
    output = tmp_path / "typed.de"
    process = subprocess.Popen([sys.executable, "-m", "nmt", "translate", "--checkpoint", str(best), "--device", "cpu",
                                "--output", str(output)],
                               stdin=terminal, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT)
    os.close(terminal)
    try:
        os.write(controller, b"The dog sees the cat .\nThe cat sees the dog .\n\x04")
        assert process.wait(timeout=60) == 0
    finally:
        os.close(controller)
    assert process.stdout.read() == b""
    lines = output.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2 and lines[0].startswith("Der Hund sieht die Katze")


def test_a_pipe_as_input_is_read_once(best, tmp_path):
    """`--input <(zcat corpus.gz)` is a pipe: counting its lines first would leave nothing to translate."""
    import os
    import threading

    fifo = tmp_path / "lines.fifo"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_text("The dog sees the cat .\n\nThe cat sees the dog .\n"))
    writer.start()
    out = tmp_path / "out.de"
    assert main(["translate", "--checkpoint", str(best), "--input", str(fifo), "--output", str(out),
                 "--device", "cpu"]) == 0
    writer.join()
    lines = out.read_text(encoding="utf-8").split("\n")
    assert len(lines) == 4 and lines[0].startswith("Der Hund") and lines[1] == "" and lines[3] == ""
