"""Corpus-level BLEU, chrF and TER with sacreBLEU on detokenized text, signatures included."""

from __future__ import annotations

from pathlib import Path

from sacrebleu.metrics import BLEU, CHRF, TER

from nmt.data.text import read_text_lines
from nmt.errors import NMTError


def score(hypotheses: list[str], references: list[list[str]]) -> dict:
    """references: one list per reference set, each as long as `hypotheses` (every caller has checked that)."""
    result = {}
    for name, metric in (("bleu", BLEU()), ("chrf", CHRF()), ("ter", TER())):
        corpus_score = metric.corpus_score(hypotheses, references)
        result[name] = round(corpus_score.score, 2)
        result[f"{name}_signature"] = str(metric.get_signature())
        if name == "bleu":
            result["bleu_text"] = str(corpus_score)
    return result


def score_files(hyp_path: Path, ref_paths: list[Path]) -> dict:
    hypotheses = read_text_lines(Path(hyp_path))
    references = []
    for ref_path in ref_paths:
        refs = read_text_lines(Path(ref_path))
        if len(refs) != len(hypotheses):
            raise NMTError(f"{hyp_path} has {len(hypotheses)} lines but {ref_path} has {len(refs)}; "
                           f"line N of the hypotheses must translate line N of the references")
        references.append(refs)
    if not hypotheses:
        raise NMTError(f"{hyp_path}: no lines to score (and its references are empty too)")
    return score(hypotheses, references)


def bleu(hypotheses: list[str], references: list[str]) -> float:
    return round(BLEU().corpus_score(hypotheses, [references]).score, 2)
