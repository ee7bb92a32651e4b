import json
import subprocess
import sys

import pytest

from tests.conftest import run_nmt

HYPS = ["Ein Hund läuft über die Wiese .", "Zwei Männer spielen Fußball", "", "Eine Frau liest ein Buch ."]
REFS = ["Ein Hund rennt über die Wiese .", "Zwei Männer spielen Fußball .", "Ein Kind schläft .",
        "Eine Frau liest ein Buch ."]


@pytest.fixture
def files(tmp_path):
    hyp, ref = tmp_path / "hyp.de", tmp_path / "ref.de"
    hyp.write_text("\n".join(HYPS) + "\n", encoding="utf-8")
    ref.write_text("\n".join(REFS) + "\n", encoding="utf-8")
    return hyp, ref


def sacrebleu_cli(hyp, ref, metric):
    out = subprocess.run([sys.executable, "-m", "sacrebleu", str(ref), "-i", str(hyp), "-m", metric, "-b", "-w", "2"],
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def test_scores_equal_sacrebleus_own_cli(files):
    hyp, ref = files
    result = run_nmt("evaluate", "--hyp", str(hyp), "--ref", str(ref), "--json")
    assert result.returncode == 0, result.stderr
    scores = json.loads(result.stdout)
    assert scores["bleu"] == pytest.approx(sacrebleu_cli(hyp, ref, "bleu"), abs=0.01)
    assert scores["chrf"] == pytest.approx(sacrebleu_cli(hyp, ref, "chrf"), abs=0.01)
    assert scores["ter"] == pytest.approx(sacrebleu_cli(hyp, ref, "ter"), abs=0.01)
    assert scores["bleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp")


def test_text_output_prints_signatures(files):
    hyp, ref = files
    result = run_nmt("evaluate", "--hyp", str(hyp), "--ref", str(ref))
    assert "BLEU = " in result.stdout and "signature: nrefs:1" in result.stdout and "chrF2 = " in result.stdout


def test_line_count_mismatch_names_both_files(files, tmp_path):
    hyp, _ = files
    short = tmp_path / "short.de"
    short.write_text("eins\nzwei\n", encoding="utf-8")
    result = run_nmt("evaluate", "--hyp", str(hyp), "--ref", str(short))
    assert result.returncode == 1
    assert f"{hyp} has 4 lines but {short} has 2" in result.stderr
