"""Greedy and beam search, batched over sentences and beams in one tensor program.

Beam search keeps K live hypotheses per sentence in rows `sentence * K + beam`.
Each step takes the 2K best extensions of each sentence: those among the first
K that end in EOS are set aside as finished, and the best K that do not end
in EOS live on. A sentence is done when it has K finished hypotheses (as in
fairseq), or earlier, when it has `nbest` and the best of them can no longer be
beaten: log-probabilities only fall as a hypothesis grows and the length
penalty is largest at the length limit, so no live hypothesis can score above
its log-probability / penalty(limit) (with alpha 0 this ends most sentences
first). Done sentences leave the batch. Greedy is the same search with K = 1, run through a
leaner loop.

Search runs a `DecodeStep`: the model itself (the reference step) or the fast
step `nmt.model.search_step.for_search(model)` builds once per translation job.

Work saved without changing a result: a beam's candidates are its K + 1 best tokens (a step keeps at
most K of one beam's non-EOS extensions and its one EOS), and the first step, where a sentence's K
beams are still one hypothesis, runs once per sentence.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nmt.model.search_step import DecodeStep
from nmt.tokenizer import BOS, EOS


@dataclass
class Hypothesis:
    tokens: list[int]  # target model ids, EOS excluded
    score: float  # log_prob / length penalty: what hypotheses are ranked by
    log_prob: float  # sum of the log-probabilities, EOS included
    attention: torch.Tensor | None = None  # (len(tokens) + 1, S) when asked for


def length_penalty(length: int, alpha: float) -> float:
    """GNMT (Wu et al. 2016): ((5 + |Y|) / 6) ** alpha; alpha 0 leaves raw log-probabilities."""
    return ((5.0 + length) / 6.0) ** alpha


def max_output_lengths(src_lengths: torch.Tensor, ratio: float) -> torch.Tensor:
    """Output steps allowed per sentence (EOS included): ratio x source pieces + 5."""
    return (src_lengths.float() * ratio).long() + 5


_BLOCK_ROWS = 64  # CPU rows scored per pass: a block's float32 log-softmax stays in cache


def _best_extensions(logits: torch.Tensor, count: int, at_limit: torch.Tensor):
    """The `count` best next tokens of each row and their log-probabilities (float32 at least): (N, count).

    The ranking is taken on the logits (normalising does not reorder a row). On the CPU the log-softmax
    runs over blocks of rows, each converted to float32 in one fused pass and read only at the chosen
    tokens: a float32 copy of the whole (N, V) matrix per step cost more than the output projection
    itself. Where a row has reached its length limit, only EOS may follow.
    """
    dtype = torch.promote_types(logits.dtype, torch.float32)
    count = min(count, logits.size(1))
    any_at_limit = bool(at_limit.any())  # one host sync per step
    rows = _BLOCK_ROWS if logits.device.type == "cpu" else max(1, logits.size(0))  # a GPU wants one launch
    tokens, log_probs = [], []
    for block, block_at_limit in zip(logits.split(rows), at_limit.split(rows)):
        # max, not argmax: argmax over bfloat16 rows is several times slower on the CPU
        best = block.max(dim=1, keepdim=True).indices if count == 1 else block.topk(count, dim=1).indices
        if any_at_limit:
            best[block_at_limit] = EOS
        log_probs.append(torch.log_softmax(block, dim=1, dtype=dtype).gather(1, best))
        tokens.append(best)
    tokens, log_probs = torch.cat(tokens), torch.cat(log_probs)
    if any_at_limit and count > 1:
        log_probs[at_limit, 1:] = float("-inf")
    return log_probs, tokens


@torch.inference_mode()
def greedy(decoder: DecodeStep, src: torch.Tensor, src_lengths: torch.Tensor, *, max_len_ratio: float = 2.0,
           alpha: float = 0.0) -> list[Hypothesis]:
    """Best next token at every step; finished sentences leave the batch."""
    memory, state = decoder.encode(src, src_lengths)
    n = src.size(0)
    limits = max_output_lengths(src_lengths, max_len_ratio).to(src.device)
    tokens = torch.full((n,), BOS, dtype=torch.long, device=src.device)
    active = torch.arange(n, device=src.device)  # sentence of each live row
    outputs = torch.zeros(n, int(limits.max()), dtype=torch.long, device=src.device)
    log_probs = torch.zeros(n, device=src.device)
    lengths = limits.clone()
    for t in range(int(limits.max())):
        logits, state, _ = decoder.step(tokens, memory, state)
        best, tokens = _best_extensions(logits, 1, limits[active] <= t + 1)
        best, tokens = best.squeeze(1), tokens.squeeze(1)
        outputs[active, t] = tokens
        log_probs[active] += best
        finished = tokens == EOS
        if bool(finished.any()):
            lengths[active[finished]] = t
            live = (~finished).nonzero().squeeze(1)
            if live.numel() == 0:
                break
            active, tokens = active[live], tokens[live]
            memory, state = memory.index_select(live), state.index_select(live)
    outputs, log_probs, lengths = outputs.tolist(), log_probs.tolist(), lengths.tolist()
    return [
        Hypothesis(outputs[i][: lengths[i]], log_probs[i] / length_penalty(lengths[i] + 1, alpha), log_probs[i])
        for i in range(n)
    ]


@torch.inference_mode()
def beam_search(decoder: DecodeStep, src: torch.Tensor, src_lengths: torch.Tensor, *, beam_size: int = 5,
                alpha: float = 1.0, max_len_ratio: float = 2.0, nbest: int = 1,
                keep_attention: bool = False) -> list[list[Hypothesis]]:
    """The `nbest` best hypotheses per sentence, best first."""
    if not 1 <= nbest <= beam_size:
        raise ValueError("nbest must be between 1 and the beam size")
    k, device = beam_size, src.device
    memory, state = decoder.encode(src, src_lengths)
    n = src.size(0)
    copies = torch.arange(n, device=device).repeat_interleave(k)  # row -> sentence; memory stays per sentence
    limits = max_output_lengths(src_lengths, max_len_ratio).to(device)
    active = torch.arange(n, device=device)  # sentence of each live block of k rows
    scores = torch.full((n, k), float("-inf"), device=device)
    scores[:, 0] = 0.0  # all beams start identical: only the first may extend at step 0
    tokens = torch.full((n,), BOS, dtype=torch.long, device=device)  # step 0: one row per sentence, see below
    history = torch.zeros(n * k, 0, dtype=torch.long, device=device)
    attention = torch.zeros(n * k, 0, src.size(1), device=device) if keep_attention else None
    finished: list[list[Hypothesis]] = [[] for _ in range(n)]
    finished_count = torch.zeros(n, dtype=torch.long, device=device)
    best_finished = torch.full((n,), float("-inf"), device=device)  # best length-normalised score so far
    limit_penalty = ((5.0 + limits.float()) / 6.0) ** alpha  # the largest penalty a hypothesis can reach
    for t in range(int(limits.max())):
        logits, state, weights = decoder.step(tokens, memory, state)  # (m * k, V)
        m = active.numel()
        at_limit = limits[active] <= t + 1  # (m,)
        # what the step keeps, its k best extensions and those of the first k that end in EOS, are among
        # its beams' k + 1 best each: a beam has one EOS, and k better extensions of one beam outrank the rest
        row_log_probs, row_tokens = _best_extensions(logits, k + 1, at_limit.repeat_interleave(logits.size(0) // m))
        if t == 0:  # a sentence's k beams start as one hypothesis: its first step ran once, for all of them
            row_log_probs, row_tokens, weights = row_log_probs[copies], row_tokens[copies], weights[copies]
            state = state.index_select(copies)
        if keep_attention:
            attention = torch.cat([attention, weights.float().unsqueeze(1)], dim=1)
        per_row = row_tokens.size(1)
        candidates = (scores.unsqueeze(2) + row_log_probs.view(m, k, per_row)).view(m, k * per_row)
        top_scores, top_ids = candidates.topk(2 * k, dim=1)  # (m, 2k), best first
        origin, token = top_ids // per_row, row_tokens.view(m, k * per_row).gather(1, top_ids)
        ends = (token == EOS) & (top_scores > float("-inf"))
        blocks, ranks = ends[:, :k].nonzero().unbind(1)  # the hypotheses that end here, all of length t
        if blocks.numel():
            rows, ended_log_probs = blocks * k + origin[blocks, ranks], top_scores[blocks, ranks].double()
            penalty = length_penalty(t + 1, alpha)
            best_finished.scatter_reduce_(0, active[blocks], (ended_log_probs / penalty).float(), reduce="amax")
            for sentence, row, words, log_prob in zip(active[blocks].tolist(), rows.tolist(),
                                                      history.index_select(0, rows).tolist(), ended_log_probs.tolist()):
                finished[sentence].append(Hypothesis(words, log_prob / penalty, log_prob,
                                                     attention[row].cpu() if keep_attention else None))
        finished_count[active] += ends[:, :k].sum(dim=1)
        # the k best extensions that do not end here live on
        live_scores, live_rank = top_scores.masked_fill(token == EOS, float("-inf")).topk(k, dim=1)
        unbeatable = best_finished[active] >= live_scores[:, 0] / limit_penalty[active]
        count = finished_count[active]
        done = ((count >= nbest) & unbeatable) | (count >= k) | at_limit
        keep = (~done).nonzero().squeeze(1)
        if keep.numel() == 0:
            break
        beam_rows = (keep.unsqueeze(1) * k + origin.gather(1, live_rank)[keep]).view(-1)
        state = state.index_select(beam_rows)
        if keep.numel() < m:
            memory = memory.index_select(keep)
        tokens = token.gather(1, live_rank)[keep].view(-1)
        history = torch.cat([history[beam_rows], tokens.unsqueeze(1)], dim=1)
        if keep_attention:
            attention = attention[beam_rows]
        scores, active = live_scores[keep], active[keep]
    # a model whose scores are all -inf or NaN (a diverged run) finishes nothing: answer empty, never nothing
    return [sorted(hyps, key=lambda h: h.score, reverse=True)[:nbest] or [Hypothesis([], float("-inf"), float("-inf"))]
            for hyps in finished]


def search(decoder: DecodeStep, src: torch.Tensor, src_lengths: torch.Tensor, *, beam_size: int, alpha: float,
           max_len_ratio: float, nbest: int = 1, keep_attention: bool = False) -> list[list[Hypothesis]]:
    """Greedy's fast path for beam 1 (unless attention is wanted), beam search otherwise."""
    if beam_size == 1 and nbest == 1 and not keep_attention:
        return [[h] for h in greedy(decoder, src, src_lengths, max_len_ratio=max_len_ratio, alpha=alpha)]
    return beam_search(decoder, src, src_lengths, beam_size=beam_size, alpha=alpha,
                       max_len_ratio=max_len_ratio, nbest=nbest, keep_attention=keep_attention)
