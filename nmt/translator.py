"""Translate lines of raw text: one result per input line, in input order. Lines are sorted by length and
grouped into batches of about `batch_tokens` source pieces internally; results go back to their input positions.
An empty line translates to an empty line; a line longer than the model's limit is truncated (with one warning
for the whole input), never dropped."""

from __future__ import annotations

import logging

import torch
from tqdm import tqdm

from nmt.batching import source_tensor
from nmt.config import DecodeConfig
from nmt.device import autocast
from nmt.model.search_step import Ensemble, for_search
from nmt.search import BeamSearch, Hypothesis, search
from nmt.tokenizer import Tokenizer

log = logging.getLogger(__name__)


def plan_decoding_batches(lengths: list[int], batch_tokens: int, max_sentences: int = 512) -> list[list[int]]:
    """Indices of non-empty lines sorted by length, longest first, cut into batches."""
    order = sorted((i for i, n in enumerate(lengths) if n > 0), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for i in order:
        batch = batches[-1] if batches else []  # its longest line is its first
        if batch and (len(batch) + 1) * (lengths[batch[0]] + 1) <= batch_tokens and len(batch) < max_sentences:
            batch.append(i)
        else:
            batches.append([i])
    return batches


def empty_hypotheses(count: int, nbest: int) -> list[list[Hypothesis]]:
    """`nbest` empty hypotheses for each of `count` empty lines, so that output line N still translates input N."""
    return [[Hypothesis([], 0.0, 0.0)] * nbest for _ in range(count)]


class Translator:
    """A model (or an ensemble: a list of models sharing `tokenizer`) ready to translate with the settings of
    `decode`: in eval mode, its search step built once in the decoding precision (`search_step.for_search`).
    Build a new one after the weights change."""

    def __init__(self, model, tokenizer: Tokenizer, decode: DecodeConfig, *, device: torch.device,
                 precision: str = "fp32"):
        self.tokenizer, self.decode, self.device, self.precision = tokenizer, decode, device, precision
        models = list(model) if isinstance(model, (list, tuple)) else [model]
        with autocast(device, precision):
            steps = [for_search(m.eval()) for m in models]
        self.decoder = steps[0] if len(steps) == 1 else Ensemble(steps)

    def encode(self, lines: list[str]) -> list[list[int]]:
        return encode_sources(self.tokenizer, lines, self.decode.max_src_len)

    def translate_ids(self, sources: list[list[int]], *, nbest: int = 1, keep_attention: bool = False,
                      progress: bool | tqdm = False, beam_size: int | None = None) -> list[list[Hypothesis]]:
        """Hypotheses for each source (a list of model ids); an empty source gets one empty hypothesis.
        `progress`: a bar of its own, or a caller's bar to advance (one bar over many calls).
        `beam_size` overrides the translator's for this call."""
        results = empty_hypotheses(len(sources), nbest)
        decode = self.decode
        batches = plan_decoding_batches([len(s) for s in sources], decode.batch_tokens)
        bar = progress if isinstance(progress, tqdm) else tqdm(total=len(sources), unit="sent", disable=not progress,
                                                                 leave=False, dynamic_ncols=True)
        bar.update(len(sources) - sum(map(len, batches)))  # empty lines: nothing to decode
        for indices in batches:
            src, src_lengths = self.source_batch([sources[i] for i in indices])
            with self.autocast():
                hypotheses = search(self.decoder, src, src_lengths, beam_size=beam_size or decode.beam_size,
                                    alpha=decode.length_penalty, max_len_ratio=decode.max_len_ratio, nbest=nbest,
                                    keep_attention=keep_attention)
            for i, hyps in zip(indices, hypotheses):
                results[i] = hyps
            bar.update(len(indices))
        if bar is not progress:
            bar.close()
        return results

    def running_search(self, *, beam_size: int, nbest: int, keep_attention: bool) -> BeamSearch:
        """A search that sentences join while it runs (`nmt serve`); call its `add` and `step` inside
        `self.autocast()`, with sources from `self.source_batch`."""
        return BeamSearch(self.decoder, beam_size=beam_size, alpha=self.decode.length_penalty,
                          max_len_ratio=self.decode.max_len_ratio, nbest=nbest, keep_attention=keep_attention)

    def autocast(self):
        """The decoding precision's context (autocast is per thread: enter it in the thread that decodes)."""
        return autocast(self.device, self.precision)

    def source_batch(self, sources: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        src, src_lengths = source_tensor(sources)
        return src.to(self.device), src_lengths

    def translate(self, lines: list[str], progress: bool = False) -> list[str]:
        """The best translation of each line, detokenized."""
        hypotheses = self.translate_ids(self.encode(lines), progress=progress)
        return [self.tokenizer.tgt.decode(hyps[0].tokens) for hyps in hypotheses]


def encode_sources(tokenizer: Tokenizer, lines: list[str], max_src_len: int) -> list[list[int]]:
    """Model ids per line; lines over `max_src_len` pieces are cut, with one warning for all of them."""
    sources = tokenizer.src.encode([line.strip() for line in lines])
    too_long = [i for i, ids in enumerate(sources) if len(ids) > max_src_len]
    if too_long:
        log.warning("%d input line(s) longer than %d pieces were truncated (first: line %d)",
                    len(too_long), max_src_len, too_long[0] + 1)
        sources = [ids[:max_src_len] for ids in sources]
    return sources


def format_nbest(hypotheses: list[list[Hypothesis]], tokenizer: Tokenizer) -> list[str]:
    """`--nbest K` output: K lines per input line, `score<TAB>translation`, best first."""
    return [f"{h.score:.4f}\t{tokenizer.tgt.decode(h.tokens)}" for hyps in hypotheses for h in hyps]
