import pytest
import torch

from nmt.config import ModelConfig
from nmt.model import Seq2Seq
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
    _, _, weights = model.decode_step(torch.tensor([2, 2]), memory, state)
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(2))
    assert torch.all(weights[0, 3:] == 0)
    assert torch.all(weights[0, :3] > 0)


def test_first_layer_with_hoisted_embedding_projection_equals_a_plain_lstm_cell():
    """The decoder feeds the embedding projection in as a per-row bias; it must equal LSTMCell on [emb; feed]."""
    model = make_model()
    decoder = model.decoder
    tokens = torch.tensor([4, 9, 11])
    feed, h, c = torch.randn(3, 24), torch.randn(3, 24), torch.randn(3, 24)
    emb_gates = decoder._embedding_gates(tokens)
    ours = torch.lstm_cell(feed, (h, c), decoder.cells[0].weight_ih[:, 16:], decoder.cells[0].weight_hh,
                           emb_gates, None)
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
def test_search_steps_with_prepared_weights_equal_the_defining_step(attention, input_feed, layers):
    """`step` with `step_weights` (one product per layer, sigmoid for tanh) computes `_advance`'s step."""
    model = make_model(attention, input_feed, layers).double()
    src = torch.tensor([[5, 6, EOS, PAD, PAD], [5, 6, 7, 8, EOS]])
    memory, state = model.encode(src, torch.tensor([3, 5]))
    fast_state, weights = state, model.step_weights()
    assert weights is not None
    for tokens in ([2, 2], [9, 4], [11, 3]):
        tokens = torch.tensor(tokens)
        logits, state, attention_weights = model.decode_step(tokens, memory, state)
        fast_logits, fast_state, fast_attention = model.decode_step(tokens, memory, fast_state, weights)
        torch.testing.assert_close(fast_logits, logits, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(fast_attention, attention_weights, rtol=1e-9, atol=1e-12)
        for fast, slow in zip(fast_state.h + fast_state.c + [fast_state.feed], state.h + state.c + [state.feed]):
            torch.testing.assert_close(fast, slow, rtol=1e-9, atol=1e-12)


def test_concat_attention_keeps_the_defining_step():
    assert make_model("concat").step_weights() is None


def test_search_weights_are_laid_out_again_after_any_parameter_changes():
    """They are kept between searches, so an optimizer step or a loaded checkpoint must invalidate them."""
    model = make_model()
    weights = model.step_weights()
    assert model.step_weights() is weights  # nothing changed: no new ~6 GFLOP table
    with torch.no_grad():
        model.decoder.embed.weight[7] += 1.0  # in place, as SGD does
    fresh = model.step_weights()
    assert fresh is not weights and not torch.equal(fresh.emb_gates[7], weights.emb_gates[7])
    model.load_state_dict(make_model(seed=1).state_dict())
    assert model.step_weights() is not fresh
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model.step_weights().dtype == torch.bfloat16


def test_a_model_that_has_searched_can_still_be_copied_and_saved(tmp_path):
    """The search weights' cache holds oneDNN tensors, which cannot be copied: it is not part of the state."""
    import copy

    model = make_model()
    model.step_weights()
    clone = copy.deepcopy(model)
    torch.save(model, tmp_path / "model.pt")
    for a, b in zip(clone.parameters(), model.parameters()):
        assert torch.equal(a, b)
    assert clone.step_weights() is not None
