"""Greedy and beam search over a `DecodeStep`, batched over sentences and beams in one tensor program.

Beam search keeps K live hypotheses per sentence in rows `sentence * K + beam`. Each step takes the 2K best extensions
of each sentence: those among the first K that end in EOS are set aside as finished, and the best K that do not end in
EOS live on. A sentence is done when it has K finished hypotheses (as in fairseq), or earlier, when it has `nbest` and
the best of them can no longer be beaten: log-probabilities only fall as a hypothesis grows and the length penalty is
largest at the length limit, so no live hypothesis can score above its log-probability / penalty(limit) (with alpha 0
this ends most sentences first). Done sentences leave the batch, and new ones may join it between steps
(`BeamSearch`). Greedy is the same search with K = 1, run through a leaner loop.

Work saved without changing a result: a beam's candidates are its K + 1 best tokens (a step keeps at most K of one
beam's non-EOS extensions and its one EOS, and K better extensions of one beam outrank the rest), and the first step,
where a sentence's K beams are still one hypothesis, runs once per sentence.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

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

    The ranking is taken on the logits (normalising does not reorder a row). On the CPU the log-softmax runs over
    blocks of rows, each converted to float32 in one fused pass and read only at the chosen tokens: a float32 copy of
    the whole (N, V) matrix per step cost more than the output projection itself. Where a row has reached its length
    limit, only EOS may follow.
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
        best, tokens = (x.squeeze(1) for x in _best_extensions(logits, 1, limits[active] <= t + 1))
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
    return [Hypothesis(outputs[i][: lengths[i]], log_probs[i] / length_penalty(lengths[i] + 1, alpha), log_probs[i])
            for i in range(n)]


class _Sentences:
    """What decides, per live sentence, when it is done; selected and joined together."""

    FIELDS = ("src_lengths", "limits", "limit_penalty", "ages", "scores", "finished_count", "best_finished")

    def __init__(self, **fields: torch.Tensor):
        self.__dict__.update(fields)

    @classmethod
    def new(cls, src_lengths: torch.Tensor, k: int, alpha: float, max_len_ratio: float) -> _Sentences:
        n, device = src_lengths.numel(), src_lengths.device
        limits = max_output_lengths(src_lengths, max_len_ratio)
        scores = torch.full((n, k), float("-inf"), device=device)
        scores[:, 0] = 0.0  # all beams start identical: only the first may extend at the first step
        return cls(src_lengths=src_lengths, limits=limits,
                   limit_penalty=((5.0 + limits.float()) / 6.0) ** alpha,  # the largest a hypothesis can reach
                   ages=torch.zeros(n, dtype=torch.long, device=device),  # steps taken = tokens so far
                   scores=scores,  # (n, k) log-probabilities of the live beams
                   finished_count=torch.zeros(n, dtype=torch.long, device=device),
                   best_finished=torch.full((n,), float("-inf"), device=device))  # best normalised score so far

    def select(self, keep: torch.Tensor) -> _Sentences:
        return _Sentences(**{f: getattr(self, f).index_select(0, keep) for f in self.FIELDS})

    def cat(self, other: _Sentences) -> _Sentences:
        return _Sentences(**{f: torch.cat([getattr(self, f), getattr(other, f)]) for f in self.FIELDS})


class BeamSearch:
    """Beam search as a running batch: `add` puts sentences in, every `step` extends each live one by a token, and a
    sentence leaves as soon as it is done, its n-best list returned by that step.

    `beam_search` adds one batch and steps until it is empty. `nmt serve` adds the sentences of new requests while
    others are being decoded (continuous batching): they join at the next step, so the batch stays full and no request
    waits for the longest sentence of a batch it happened to share. Sentences of different ages share a step: each
    keeps its own step count, length limit and length penalty.
    """

    def __init__(self, decoder: DecodeStep, *, beam_size: int, alpha: float, max_len_ratio: float,
                 nbest: int = 1, keep_attention: bool = False):
        if not 1 <= nbest <= beam_size:
            raise ValueError("nbest must be between 1 and the beam size")
        self.decoder, self.k, self.alpha, self.max_len_ratio = decoder, beam_size, alpha, max_len_ratio
        self.nbest, self.keep_attention = nbest, keep_attention
        self.joining: list[tuple[list, torch.Tensor, object, object]] = []  # keys, lengths, memory, state
        self.keys: list = []  # the caller's key of each live sentence
        self.finished: list[list[Hypothesis]] = []  # per live sentence
        self.sentences: _Sentences | None = None
        self.memory = self.state = self.tokens = self.history = self.attention = None

    def __len__(self) -> int:
        return len(self.keys) + sum(len(keys) for keys, *_ in self.joining)

    def all_keys(self) -> list:
        return self.keys + [key for keys, *_ in self.joining for key in keys]

    @torch.inference_mode()
    def drop(self, unwanted) -> list:
        """Remove the live sentences whose key `unwanted(key)` is true (nobody waits for them any more), and
        return their keys; sentences still joining are dropped at a later call, once they are live."""
        gone = [i for i, key in enumerate(self.keys) if unwanted(key)]
        if not gone:
            return []
        dropped = [self.keys[i] for i in gone]
        kept = sorted(set(range(len(self.keys))) - set(gone))
        if not kept:
            self.keys, self.finished, self.sentences = [], [], None
            self.memory = self.state = self.tokens = self.history = self.attention = None
            return dropped
        keep = torch.tensor(kept, device=self.tokens.device)
        rows = (keep.unsqueeze(1) * self.k + torch.arange(self.k, device=keep.device)).view(-1)  # k beams each
        self.memory, self.state, self.sentences = self.memory.index_select(keep), self.state.index_select(rows), \
            self.sentences.select(keep)
        self.tokens, self.history = self.tokens[rows], self.history[rows]
        if self.keep_attention:
            self.attention = self.attention[rows]
        self.keys, self.finished = [self.keys[i] for i in kept], [self.finished[i] for i in kept]
        return dropped

    @torch.inference_mode()
    def add(self, src: torch.Tensor, src_lengths: torch.Tensor, keys) -> None:
        """src (B, S) padded ids and their lengths (B,); the sentences start at the next step."""
        memory, state = self.decoder.encode(src, src_lengths)
        self.joining.append((list(keys), src_lengths.to(src.device), memory, state))

    def _join(self, one_row: bool) -> None:
        """Make the joining sentences live: k rows each, or one row each when every live sentence is new (a
        sentence's k beams are one hypothesis until its first step, which is then computed once)."""
        groups, self.joining = self.joining, []
        keys = [key for g in groups for key in g[0]]
        lengths = torch.cat([g[1] for g in groups])
        memory, state = groups[0][2], groups[0][3]
        for _, _, more_memory, more_state in groups[1:]:
            memory, state = memory.cat(more_memory), state.cat(more_state)
        n, k, device = len(keys), self.k, lengths.device
        if not one_row:
            state = state.index_select(torch.arange(n, device=device).repeat_interleave(k))
        tokens = torch.full((n if one_row else n * k,), BOS, dtype=torch.long, device=device)
        sentences = _Sentences.new(lengths, k, self.alpha, self.max_len_ratio)
        self.keys += keys
        self.finished += [[] for _ in keys]
        if self.sentences is None:
            self.sentences, self.memory, self.state, self.tokens = sentences, memory, state, tokens
            self.history = torch.zeros(n * k, 0, dtype=torch.long, device=device)
            self.attention = torch.zeros(n * k, 0, 0, device=device) if self.keep_attention else None
            return
        self.sentences = self.sentences.cat(sentences)
        self.memory, self.state = self.memory.cat(memory), self.state.cat(state)
        self.tokens = torch.cat([self.tokens, tokens])
        # the new rows have no history or attention yet
        self.history = torch.cat([self.history, self.history.new_zeros(n * k, self.history.size(1))])
        if self.keep_attention:
            self.attention = torch.cat([self.attention, self.attention.new_zeros(n * k, *self.attention.shape[1:])])

    @torch.inference_mode()
    def step(self) -> list[tuple[object, list[Hypothesis]]]:
        """One token for every live sentence; returns (key, n-best list) of those that are now done."""
        k, fresh = self.k, not self.keys
        if self.joining:
            self._join(one_row=fresh)
        if not self.keys:
            return []
        s, m = self.sentences, len(self.keys)
        logits, state, weights = self.decoder.step(self.tokens, self.memory, self.state)  # (rows, V)
        at_limit = s.limits <= s.ages + 1  # (m,)
        row_log_probs, row_tokens = _best_extensions(logits, k + 1, at_limit.repeat_interleave(logits.size(0) // m))
        if fresh:  # one row per sentence ran: each of its k beams starts from it
            copies = torch.arange(m, device=logits.device).repeat_interleave(k)
            row_log_probs, row_tokens, weights = row_log_probs[copies], row_tokens[copies], weights[copies]
            state = state.index_select(copies)
        oldest = int(s.ages.max())
        # history, attention (m * k, steps[, S]) at each sentence's own step: none is past `oldest`, sources only grow
        if self.keep_attention:
            attention = self.attention[:, :oldest]
            self.attention = F.pad(attention, (0, weights.size(1) - attention.size(2), 0, 1))
            self.attention[torch.arange(m * k), s.ages.repeat_interleave(k)] = weights.float()
        per_row = row_tokens.size(1)
        candidates = (s.scores.unsqueeze(2) + row_log_probs.view(m, k, per_row)).view(m, k * per_row)
        top_scores, top_ids = candidates.topk(2 * k, dim=1)  # (m, 2k), best first
        origin, token = top_ids // per_row, row_tokens.view(m, k * per_row).gather(1, top_ids)
        ends = (token == EOS) & (top_scores > float("-inf"))
        blocks, ranks = ends[:, :k].nonzero().unbind(1)  # the hypotheses that end here
        if blocks.numel():
            self._finish(blocks, blocks * k + origin[blocks, ranks], top_scores[blocks, ranks].double())
        s.finished_count += ends[:, :k].sum(dim=1)
        # the k best extensions that do not end here live on
        live_scores, live_rank = top_scores.masked_fill(token == EOS, float("-inf")).topk(k, dim=1)
        unbeatable = s.best_finished >= live_scores[:, 0] / s.limit_penalty
        done = ((s.finished_count >= self.nbest) & unbeatable) | (s.finished_count >= k) | at_limit
        results = [(self.keys[i], sorted(self.finished[i], key=lambda h: h.score, reverse=True)[: self.nbest]
                    # a model whose scores are all -inf or NaN (a diverged run) finishes nothing: answer empty
                    or [Hypothesis([], float("-inf"), float("-inf"))]) for i in done.nonzero().squeeze(1).tolist()]
        keep = (~done).nonzero().squeeze(1)
        if keep.numel() == 0:
            self.keys, self.finished, self.sentences = [], [], None
            self.memory = self.state = self.tokens = self.history = self.attention = None
            return results
        beam_rows = (keep.unsqueeze(1) * k + origin.gather(1, live_rank)[keep]).view(-1)
        self.state = state.index_select(beam_rows)
        if keep.numel() < m:
            self.memory, s = self.memory.index_select(keep), s.select(keep)
            kept = keep.tolist()
            self.keys, self.finished = [self.keys[i] for i in kept], [self.finished[i] for i in kept]
        self.tokens = token.gather(1, live_rank)[keep].view(-1)
        self.history = F.pad(self.history.index_select(0, beam_rows)[:, :oldest], (0, 1))
        self.history[torch.arange(self.history.size(0)), s.ages.repeat_interleave(k)] = self.tokens
        if self.keep_attention:
            self.attention = self.attention[beam_rows]
        s.scores = live_scores[keep]
        s.ages += 1
        self.sentences = s
        return results

    def _finish(self, blocks: torch.Tensor, rows: torch.Tensor, log_probs: torch.Tensor) -> None:
        """Set aside the hypotheses of `rows` (live sentences `blocks`) that end with this step's EOS."""
        s = self.sentences
        ages, lengths = s.ages[blocks].tolist(), s.src_lengths[blocks].tolist()
        penalties = [length_penalty(age + 1, self.alpha) for age in ages]
        scores = log_probs / torch.tensor(penalties, dtype=torch.float64, device=log_probs.device)
        s.best_finished.scatter_reduce_(0, blocks, scores.float(), reduce="amax")
        words = self.history.index_select(0, rows).tolist()
        for i, (sentence, row, age, log_prob) in enumerate(zip(blocks.tolist(), rows.tolist(), ages,
                                                                 log_probs.tolist())):
            weights = self.attention[row, : age + 1, : lengths[i]].cpu() if self.keep_attention else None
            self.finished[sentence].append(Hypothesis(words[i][:age], log_prob / penalties[i], log_prob, weights))


def beam_search(decoder: DecodeStep, src: torch.Tensor, src_lengths: torch.Tensor, *, beam_size: int = 5,
                alpha: float = 1.0, max_len_ratio: float = 2.0, nbest: int = 1,
                keep_attention: bool = False) -> list[list[Hypothesis]]:
    """The `nbest` best hypotheses per sentence, best first."""
    search = BeamSearch(decoder, beam_size=beam_size, alpha=alpha, max_len_ratio=max_len_ratio, nbest=nbest,
                        keep_attention=keep_attention)
    search.add(src, src_lengths, range(src.size(0)))
    results = {}
    while search:
        results.update(search.step())
    return [results[i] for i in range(src.size(0))]


def search(decoder: DecodeStep, src: torch.Tensor, src_lengths: torch.Tensor, *, beam_size: int, alpha: float,
           max_len_ratio: float, nbest: int = 1, keep_attention: bool = False) -> list[list[Hypothesis]]:
    """Greedy's fast path for beam 1 (unless attention is wanted), beam search otherwise."""
    if beam_size == 1 and nbest == 1 and not keep_attention:
        return [[h] for h in greedy(decoder, src, src_lengths, max_len_ratio=max_len_ratio, alpha=alpha)]
    return beam_search(decoder, src, src_lengths, beam_size=beam_size, alpha=alpha,
                       max_len_ratio=max_len_ratio, nbest=nbest, keep_attention=keep_attention)
