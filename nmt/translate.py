"""Translate lines of raw text: one result per input line, in input order.

Lines are sorted by length and grouped into batches of about `batch_tokens`
source pieces internally; results go back to their input positions. An empty
line translates to an empty line; a line longer than the model's limit is
truncated (with one warning for the whole input), never dropped.
"""

from __future__ import annotations

import contextlib
import logging

import torch
from tqdm import tqdm

from nmt.batching import source_tensor
from nmt.search import Hypothesis, search
from nmt.tokenizer import Tokenizer

log = logging.getLogger(__name__)


def plan_decoding_batches(lengths: list[int], batch_tokens: int, max_sentences: int = 512) -> list[list[int]]:
    """Indices of non-empty lines sorted by length, longest first, cut into batches."""
    order = sorted((i for i, n in enumerate(lengths) if n > 0), key=lambda i: -lengths[i])
    batches, current = [], []
    for i in order:
        longest = lengths[current[0]] if current else lengths[i]  # longest first: the batch's first
        if current and ((len(current) + 1) * (longest + 1) > batch_tokens or len(current) >= max_sentences):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def translate_ids(model, sources: list[list[int]], *, device: torch.device, beam_size: int, alpha: float,
                  max_len_ratio: float, batch_tokens: int, nbest: int = 1, keep_attention: bool = False,
                  precision_context=None, progress: bool = False) -> list[list[Hypothesis]]:
    """Hypotheses for each source (a list of model ids); an empty source gets one empty hypothesis."""
    results: list[list[Hypothesis]] = [[Hypothesis([], 0.0, 0.0)] * nbest for _ in sources]
    batches = plan_decoding_batches([len(s) for s in sources], batch_tokens)
    bar = tqdm(total=sum(map(len, batches)), unit="sent", disable=not progress, leave=False, dynamic_ncols=True)
    model.eval()
    for indices in batches:
        src, src_lengths = source_tensor([sources[i] for i in indices])
        with (precision_context or contextlib.nullcontext)():
            hypotheses = search(model, src.to(device), src_lengths, beam_size=beam_size, alpha=alpha,
                                max_len_ratio=max_len_ratio, nbest=nbest, keep_attention=keep_attention)
        for i, hyps in zip(indices, hypotheses):
            results[i] = hyps
        bar.update(len(indices))
    bar.close()
    return results


def encode_sources(tokenizer: Tokenizer, lines: list[str], max_len: int) -> list[list[int]]:
    """Model ids per line; lines over `max_len` pieces are cut, with one warning for all of them."""
    sources = tokenizer.src.encode([line.strip() for line in lines])
    too_long = [i for i, ids in enumerate(sources) if len(ids) > max_len]
    if too_long:
        log.warning("%d input line(s) longer than %d pieces were truncated (first: line %d)",
                    len(too_long), max_len, too_long[0] + 1)
        sources = [ids[:max_len] for ids in sources]
    return sources


def translate_lines(model, tokenizer: Tokenizer, lines: list[str], *, max_len: int, **options) -> list[str]:
    """The best translation of each line, detokenized."""
    sources = encode_sources(tokenizer, lines, max_len)
    return [tokenizer.tgt.decode(hyps[0].tokens) for hyps in translate_ids(model, sources, **options)]


def format_nbest(hypotheses: list[list[Hypothesis]], tokenizer: Tokenizer) -> list[str]:
    """`--nbest K` output: K lines per input line, `score<TAB>translation`, best first."""
    return [f"{h.score:.4f}\t{tokenizer.tgt.decode(h.tokens)}" for hyps in hypotheses for h in hyps]
