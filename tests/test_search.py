import math
from dataclasses import dataclass

import pytest
import torch

from nmt.config import ModelConfig
from nmt.model import Seq2Seq
from nmt.search import BeamSearch, beam_search, greedy, length_penalty
from nmt.tokenizer import BOS, EOS

A, B, C = 4, 5, 6
V = 7


@dataclass
class LastToken:
    """Mock decoder state: the last token of each row."""

    last: torch.Tensor

    def index_select(self, rows):
        return LastToken(self.last[rows])


@dataclass
class NoMemory:
    rows: int

    def index_select(self, rows):
        return NoMemory(len(rows))


class MarkovModel:
    """Next-token distributions fixed by the previous token: no network at all."""

    def __init__(self, table: dict[int, dict[int, float]]):
        self.logp = torch.full((V, V), -1e9)
        for prev, dist in table.items():
            for token, p in dist.items():
                self.logp[prev, token] = math.log(p)

    def encode(self, src, src_lengths):
        return NoMemory(src.size(0)), LastToken(torch.full((src.size(0),), BOS))

    def step(self, tokens, memory, state):
        return self.logp[tokens].clone(), LastToken(tokens), torch.ones(tokens.size(0), 1)


# Greedy takes A (0.55), then A's best is EOS (0.4): p = 0.22. Beam search finds B EOS: 0.45 * 0.9 = 0.405.
TRAP = MarkovModel({BOS: {A: 0.55, B: 0.45}, A: {EOS: 0.4, C: 0.3, B: 0.3}, B: {EOS: 0.9, C: 0.1},
                    C: {EOS: 1.0}})
SRC = torch.tensor([[8, 8, 8, EOS]])
LENGTHS = torch.tensor([4])


def test_beam_search_finds_the_best_sequence_that_greedy_misses():
    assert greedy(TRAP, SRC, LENGTHS)[0].tokens == [A]
    best = beam_search(TRAP, SRC, LENGTHS, beam_size=2, alpha=0.0)[0][0]
    assert best.tokens == [B]
    assert best.log_prob == pytest.approx(math.log(0.45 * 0.9), abs=1e-5)


def test_nbest_lists_are_sorted_and_scored():
    hyps = beam_search(TRAP, SRC, LENGTHS, beam_size=3, alpha=0.0, nbest=3)[0]
    assert [h.tokens for h in hyps] == [[B], [A], [A, C]]
    assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
    assert hyps[2].log_prob == pytest.approx(math.log(0.55 * 0.3 * 1.0), abs=1e-5)


def test_length_penalty_normalises_scores():
    hyp = beam_search(TRAP, SRC, LENGTHS, beam_size=2, alpha=1.0)[0][0]
    assert hyp.score == pytest.approx(hyp.log_prob / length_penalty(len(hyp.tokens) + 1, 1.0))
    assert length_penalty(1, 0.0) == 1.0 and length_penalty(7, 1.0) == 2.0


def test_outputs_stop_at_the_length_limit():
    loop = MarkovModel({BOS: {C: 0.9, EOS: 0.1}, C: {C: 0.9, EOS: 0.1}})
    for hyp in (greedy(loop, SRC, LENGTHS, max_len_ratio=1.0)[0], beam_search(
            loop, SRC, LENGTHS, beam_size=2, max_len_ratio=1.0)[0][0]):
        assert len(hyp.tokens) <= 4 + 5 - 1  # ratio x 4 source pieces + 5 steps, the last one EOS


def random_model(seed=0, eos_bias=2.5, weight_scale=1.0):
    """A small untrained model. At the default init every output is one token repeated or empty; matrices
    scaled by 10 give outputs that differ by source, 2 to 24 tokens long, some ended by EOS, some by the limit."""
    torch.manual_seed(seed)
    cfg = ModelConfig(emb_dim=16, hidden_size=32, layers=2, dropout=0.0)
    model = Seq2Seq(cfg, 40, 40).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(weight_scale)
        model.decoder.generator.bias[EOS] += eos_bias
    return model


def batch_of(sources):
    from nmt.batching import source_tensor

    return source_tensor(sources)


SOURCES = [[5, 6, 7, 8, 9, 10], [11, 12], [13, 14, 15, 16], [17], [18, 19, 20, 21, 22, 23, 24, 25, 26], [27, 28, 29]]


def test_beam_one_equals_greedy():
    model = random_model()
    src, lengths = batch_of(SOURCES)
    greedy_hyps = greedy(model, src, lengths)
    beam_hyps = beam_search(model, src, lengths, beam_size=1, alpha=0.0)
    for g, (b,) in zip(greedy_hyps, beam_hyps):
        assert g.tokens == b.tokens
        assert g.log_prob == pytest.approx(b.log_prob, abs=1e-4)


@pytest.mark.parametrize("beam_size", [2, 5])
def test_batched_beam_search_equals_one_sentence_at_a_time(beam_size):
    model = random_model(1)
    src, lengths = batch_of(SOURCES)
    batched = beam_search(model, src, lengths, beam_size=beam_size, nbest=2)
    for source, hyps in zip(SOURCES, batched):
        single_src, single_len = batch_of([source])
        (alone,) = beam_search(model, single_src, single_len, beam_size=beam_size, nbest=2)
        assert [h.tokens for h in hyps] == [h.tokens for h in alone]
        for h, a in zip(hyps, alone):
            assert h.score == pytest.approx(a.score, abs=1e-4)


def test_attention_is_kept_for_plots():
    model = random_model()
    src, lengths = batch_of(SOURCES[:2])
    hyps = beam_search(model, src, lengths, beam_size=3, keep_attention=True)
    for hyp_list, length in zip(hyps, lengths.tolist()):
        attention = hyp_list[0].attention
        assert attention.shape == (len(hyp_list[0].tokens) + 1, length)  # the sentence's own source, EOS included
        torch.testing.assert_close(attention.sum(dim=1), torch.ones(attention.shape[0]))


@pytest.mark.parametrize("step", ["reference", "fast", "ensemble"])
@pytest.mark.parametrize("beam_size", [1, 3])
def test_sentences_joining_a_running_search_get_what_they_get_alone(step, beam_size):
    """Continuous batching (`nmt serve`): sentences that join while others are half-way, longer and shorter
    ones (the memory is padded), leave with the hypotheses, scores and attention of a search of their own."""
    from nmt.model.search_step import Ensemble, FastStep

    model = random_model(1, eos_bias=0.0, weight_scale=10.0)
    decoder = {"reference": model, "fast": FastStep(model),
               "ensemble": Ensemble([model, random_model(2, eos_bias=0.0, weight_scale=10.0)])}[step]
    options = dict(beam_size=beam_size, alpha=1.0, max_len_ratio=2.0, nbest=beam_size, keep_attention=True)
    search = BeamSearch(decoder, **options)
    joins = {0: [1, 3], 1: [0], 3: [4, 2], 4: [5]}  # step -> sentences that join before it
    answers, steps = {}, 0
    while steps <= max(joins) or search:
        if steps in joins:
            search.add(*batch_of([SOURCES[i] for i in joins[steps]]), joins[steps])
        answers.update(search.step())
        steps += 1
    assert sorted(answers) == list(range(len(SOURCES)))
    assert len({tuple(hyps[0].tokens) for hyps in answers.values()}) >= 4  # a model worth testing
    for i, source in enumerate(SOURCES):
        (alone,) = beam_search(decoder, *batch_of([source]), **options)
        assert [h.tokens for h in answers[i]] == [h.tokens for h in alone]
        for joined, single in zip(answers[i], alone):
            assert joined.score == pytest.approx(single.score, rel=1e-4)
            torch.testing.assert_close(joined.attention, single.attention, atol=1e-3, rtol=0)  # weights x10: sensitive


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("count", [1, 4])
def test_best_extensions_over_row_blocks_equal_a_full_log_softmax(dtype, count):
    """Scored a block of rows at a time, with rows at the length limit in several blocks."""
    from nmt.search import _BLOCK_ROWS, _best_extensions

    torch.manual_seed(0)
    rows = 2 * _BLOCK_ROWS + 5
    logits = (torch.randn(rows, 50) * 4).to(dtype)
    at_limit = torch.zeros(rows, dtype=torch.bool)
    at_limit[[3, _BLOCK_ROWS + 1, rows - 1]] = True
    log_probs, tokens = _best_extensions(logits, count, at_limit)

    full = torch.log_softmax(logits.double(), dim=1)
    expected_tokens = logits.topk(count, dim=1).indices
    expected_tokens[at_limit] = EOS
    expected = full.gather(1, expected_tokens)
    expected[at_limit, 1:] = float("-inf")
    assert log_probs.dtype == torch.float32 and tokens.shape == (rows, count)
    assert torch.equal(tokens[:, 0], expected_tokens[:, 0])
    # ties in bfloat16 may order equal logits differently: compare the chosen log-probabilities
    torch.testing.assert_close(log_probs.double(), expected, rtol=0, atol=1e-5)


def reference_beam_search(model: MarkovModel, k: int, alpha: float, limit: int) -> list[tuple[list[int], float]]:
    """fairseq's rule written plainly: each step the 2k best of all k x V extensions; those of the first k
    that end in EOS finish; the k best others live on; done at k finished (or the length limit)."""
    live, finished = [((), 0.0)], []
    for t in range(limit):
        candidates = []
        for tokens, log_prob in live:
            logp = model.logp[tokens[-1] if tokens else BOS].double()
            for v in [EOS] if t + 1 >= limit else range(V):
                candidates.append((tokens + (v,), log_prob + float(logp[v])))
        top = sorted(candidates, key=lambda c: -c[1])[: 2 * k]
        finished += [(list(tokens[:-1]), lp / length_penalty(t + 1, alpha)) for tokens, lp in top[:k]
                     if tokens[-1] == EOS and lp > -1e8]
        live = [c for c in top if c[0][-1] != EOS][:k]
        if len(finished) >= k or t + 1 >= limit:
            break
    return sorted(finished, key=lambda h: -h[1])[:k]


@pytest.mark.parametrize("beam_size", [2, 3, 5])
def test_beam_search_equals_the_plain_rule_on_random_models(beam_size):
    """Search takes each beam's k + 1 best tokens, not all V: the n-best lists must not change."""
    generator = torch.Generator().manual_seed(beam_size)
    for trial in range(20):
        table = {}
        for prev in range(V):
            weights = torch.rand(V, generator=generator) * (torch.rand(V, generator=generator) < 0.8)
            weights[[BOS, 0]] = 0.0  # never BOS or padding
            weights[EOS] += 0.3
            table[prev] = {v: float(w / weights.sum()) for v, w in enumerate(weights) if w > 0}
        model = MarkovModel(table)
        got = beam_search(model, SRC, LENGTHS, beam_size=beam_size, alpha=1.0, nbest=beam_size)[0]
        expected = reference_beam_search(model, beam_size, 1.0, limit=4 * 2 + 5)
        assert [h.tokens for h in got] == [tokens for tokens, _ in expected], f"trial {trial}"
        assert [h.score for h in got] == pytest.approx([score for _, score in expected], abs=1e-4)


def test_the_first_beam_step_runs_once_per_sentence():
    """A sentence's beams are one hypothesis until the first step: computing it k times would be waste."""
    rows = []

    class Counting(MarkovModel):
        def step(self, tokens, memory, state):
            rows.append(tokens.size(0))
            return super().step(tokens, memory, state)

    model = Counting({BOS: {A: 0.5, B: 0.5}, A: {C: 0.6, EOS: 0.4}, B: {C: 0.7, EOS: 0.3}, C: {EOS: 1.0}})
    src = torch.cat([SRC, SRC])
    beam_search(model, src, torch.tensor([4, 4]), beam_size=3)
    assert rows[:2] == [2, 2 * 3]


@pytest.mark.parametrize("beam_size", [1, 5])
def test_the_fast_search_finds_the_reference_searchs_hypotheses_on_a_trained_model(tiny_run, beam_size, route):
    """The search that ships (fast step, this machine's products) against the defining step, on real sentences."""
    from nmt import checkpoint
    from nmt.batching import source_tensor
    from nmt.data.text import read_text_lines
    from nmt.model.search_step import FastStep, for_search
    from nmt.search import search
    from tests.conftest import TINY_DATA

    loaded = checkpoint.load_for_inference(tiny_run / "checkpoints" / "best.pt", torch.device("cpu"))
    fast = for_search(loaded.model)
    assert isinstance(fast, FastStep)
    lines = read_text_lines(TINY_DATA / "test.en")[:40]
    src, src_lengths = source_tensor(loaded.tokenizer.src.encode(lines))
    options = dict(beam_size=beam_size, alpha=1.0, max_len_ratio=2.0)
    got = search(fast, src, src_lengths, **options)
    want = search(loaded.model, src, src_lengths, **options)
    assert [h[0].tokens for h in got] == [h[0].tokens for h in want]
    assert [h[0].score for h in got] == pytest.approx([h[0].score for h in want], abs=1e-3)


@pytest.mark.parametrize("beam_size", [1, 3])
def test_dropping_sentences_from_a_running_search_leaves_the_others_as_they_were(beam_size):
    """`nmt serve` drops the sentences of a request nobody waits for any more (timed out, client gone): the
    others must finish with the hypotheses, scores and attention they get without the drop."""
    model = random_model(1, eos_bias=0.0, weight_scale=10.0)
    options = dict(beam_size=beam_size, alpha=1.0, max_len_ratio=2.0, nbest=beam_size, keep_attention=True)
    search = BeamSearch(model, **options)
    search.add(*batch_of(SOURCES), list(range(len(SOURCES))))
    answers, unwanted = {}, {1, 4}
    for steps in range(200):
        if steps == 2:
            assert sorted(search.drop(lambda key: key in unwanted)) == sorted(unwanted - set(answers))
        answers.update(search.step())
        if not search:
            break
    assert sorted(answers) == sorted(set(range(len(SOURCES))) - unwanted)
    for i in answers:
        (alone,) = beam_search(model, *batch_of([SOURCES[i]]), **options)
        assert [h.tokens for h in answers[i]] == [h.tokens for h in alone]
        for kept, single in zip(answers[i], alone):
            assert kept.score == pytest.approx(single.score, rel=1e-4)
            torch.testing.assert_close(kept.attention, single.attention, atol=1e-3, rtol=0)
    assert search.drop(lambda key: True) == []  # nothing live: nothing to drop
