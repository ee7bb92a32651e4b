import pytest
import torch

from nmt.config import ModelConfig
from nmt.model import DecoderState, Seq2Seq
from nmt.model.search_step import FastStep, for_search
from nmt.tokenizer import EOS, PAD


def make_model(attention="general", input_feed=True, layers=2, seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig(emb_dim=16, hidden_size=24, layers=layers, attention=attention, input_feed=input_feed,
                      dropout=0.0)
    return Seq2Seq(cfg, 30, 40).eval()


@pytest.mark.parametrize("attention", ["dot", "general", "concat"])
@pytest.mark.parametrize("input_feed", [True, False])
def test_padding_never_changes_a_sentences_output(attention, input_feed):
    model = make_model(attention, input_feed)
    short_src, long_src = [5, 6, 7, EOS], [8, 9, 10, 11, 12, 13, EOS]
    tgt_short, tgt_long = [2, 14, 15], [2, 16, 17, 18, 19]
    alone = model(torch.tensor([short_src]), torch.tensor([4]), torch.tensor([tgt_short]))
    src = torch.tensor([short_src + [PAD] * 3, long_src])
    tgt = torch.tensor([tgt_short + [PAD] * 2, tgt_long])
    batched = model(src, torch.tensor([4, 7]), tgt)
    torch.testing.assert_close(batched[0, :3], alone[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attention", ["dot", "general", "concat"])
def test_attention_weights_sum_to_one_and_skip_padding(attention):
    model = make_model(attention)
    src = torch.tensor([[5, 6, EOS, PAD, PAD], [5, 6, 7, 8, EOS]])
    memory, state = model.encode(src, torch.tensor([3, 5]))
    _, _, weights = model.step(torch.tensor([2, 2]), memory, state)
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(2))
    assert torch.all(weights[0, 3:] == 0)
    assert torch.all(weights[0, :3] > 0)


def test_first_layer_with_hoisted_embedding_projection_equals_a_plain_lstm_cell():
    """The decoder feeds the embedding projection in as a per-row bias; it must equal LSTMCell on [emb; feed]."""
    model = make_model()
    decoder = model.decoder
    tokens = torch.tensor([4, 9, 11])
    feed, h, c = torch.randn(3, 24), torch.randn(3, 24), torch.randn(3, 24)
    ours = decoder._first_layer(decoder._embedding_gates(tokens), DecoderState([h, h], [c, c], feed))
    reference = decoder.cells[0](torch.cat([decoder.embed(tokens), feed], dim=1), (h, c))
    torch.testing.assert_close(ours[0], reference[0])
    torch.testing.assert_close(ours[1], reference[1])


def test_matched_model_has_the_peers_parameter_count():
    """configs/bench_matched.yaml: within 5% of the peers' 13.38 M with their 3,968 / 5,488 vocabularies."""
    from nmt.config import load_config
    from tests.conftest import ROOT

    cfg = load_config(ROOT / "configs" / "bench_matched.yaml")
    count = Seq2Seq(cfg.model, 3968 + 4, 5488 + 4).num_parameters()
    assert abs(count - 13_378_928) / 13_378_928 < 0.05


def test_tied_embeddings_share_one_matrix():
    torch.manual_seed(0)
    model = Seq2Seq(ModelConfig(emb_dim=16, hidden_size=16, layers=1, tie_embeddings=True), 30, 40)
    assert model.decoder.generator.weight is model.decoder.embed.weight


@pytest.mark.parametrize("attention,input_feed,layers", [("general", True, 2), ("dot", False, 1), ("dot", True, 3)])
def test_the_fast_search_step_equals_the_defining_step_in_float64(attention, input_feed, layers):
    """`FastStep` (one product per layer, sigmoid for tanh, an embedding-gate table) computes `_advance`'s step."""
    model = make_model(attention, input_feed, layers).double()
    fast = for_search(model)
    assert isinstance(fast, FastStep)
    assert_same_steps(model, fast, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("attention", ["dot", "general"])
def test_the_shipped_float32_search_step_equals_the_defining_step(attention, route):
    """In float32, through each product route this machine may pick (oneDNN with prepacked weights, or
    torch's BLAS): the step search actually runs, against the reference, within float32 rounding."""
    model = make_model(attention)
    assert_same_steps(model, for_search(model), rtol=1e-4, atol=1e-5)


def assert_same_steps(model, fast, rtol, atol):
    src = torch.tensor([[5, 6, EOS, PAD, PAD], [5, 6, 7, 8, EOS]])
    memory, state = model.encode(src, torch.tensor([3, 5]))
    fast_state = state
    for tokens in ([2, 2], [9, 4], [11, 3]):
        tokens = torch.tensor(tokens)
        logits, state, attention_weights = model.step(tokens, memory, state)
        fast_logits, fast_state, fast_attention = fast.step(tokens, memory, fast_state)
        torch.testing.assert_close(fast_logits, logits, rtol=rtol, atol=atol)
        torch.testing.assert_close(fast_attention, attention_weights, rtol=rtol, atol=atol)
        for got, want in zip(fast_state.h + fast_state.c + [fast_state.feed], state.h + state.c + [state.feed]):
            torch.testing.assert_close(got.to(want.dtype), want, rtol=rtol, atol=atol)


def test_concat_attention_searches_with_the_defining_step():
    model = make_model("concat")
    assert for_search(model) is model


def test_the_fast_step_is_laid_out_in_the_decoding_precision():
    model = make_model()
    assert for_search(model).dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast = for_search(model)
    assert fast.dtype == torch.bfloat16 and all(w.dtype == torch.bfloat16 for w in fast.layers)


def test_a_model_that_has_searched_can_still_be_copied_and_saved(tmp_path):
    """Training deep-copies and saves the model after validating with a search: the fast step's oneDNN
    tensors must not be part of the model."""
    import copy

    model = make_model()
    fast = for_search(model)
    fast.step(torch.tensor([2]), *model.encode(torch.tensor([[5, EOS]]), torch.tensor([2])))
    clone = copy.deepcopy(model)
    torch.save(model, tmp_path / "model.pt")
    for a, b in zip(clone.parameters(), model.parameters()):
        assert torch.equal(a, b)
