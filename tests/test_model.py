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


@pytest.mark.parametrize("p", [0.3, 0.5, 0.1])
def test_dropout_masks_keep_the_right_share_at_the_right_scale(p):
    from nmt.model.dropout import keep_mask

    torch.manual_seed(0)
    mask = keep_mask((3, 333_333), p, "cpu")  # a count that is not a multiple of four draws per integer
    assert mask.shape == (3, 333_333) and mask.dtype == torch.float32
    kept = mask != 0
    assert set(mask.unique().tolist()) == {0.0, torch.tensor(1 / (1 - p), dtype=torch.float32).item()}
    assert abs(kept.double().mean().item() - (1 - p)) < 0.003  # ~6 standard deviations at a million draws
    # the four draws cut from one random integer are independent: neighbours agree as often as chance says
    flat = kept.flatten()[:999_996].view(-1, 4).double()
    for lane in range(1, 4):
        agree = (flat[:, 0] == flat[:, lane]).double().mean().item()
        assert abs(agree - ((1 - p) ** 2 + p ** 2)) < 0.005, lane
    torch.manual_seed(0)
    assert torch.equal(keep_mask((3, 333_333), p, "cpu"), mask)  # the seed decides it, as resuming needs


def test_dropout_is_the_identity_outside_training_and_scales_in_the_inputs_dtype():
    from nmt.model.dropout import dropout

    x = torch.randn(64, 40, dtype=torch.float64)
    assert dropout(x, 0.3, training=False) is x and dropout(x, 0.0, training=True) is x
    out = dropout(x, 0.3, training=True)
    kept = out != 0
    assert out.dtype == torch.float64
    torch.testing.assert_close(out[kept], x[kept] / 0.7, rtol=0, atol=1e-15)


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_the_cpu_encoders_padded_layers_compute_what_packed_sequences_do(layers):
    """Outputs, final states and every gradient, in float64: padding must not leak into a sentence's states
    in either direction (lengths 1 to the full width, in no order)."""
    from nmt.model.encoder import Encoder

    torch.manual_seed(0)
    encoder = Encoder(50, 16, 24, layers, 0.0).double().train()
    lengths = torch.tensor([7, 3, 5, 1, 7, 2])
    src = torch.randint(4, 50, (6, 7))
    src[torch.arange(7) >= lengths.unsqueeze(1)] = PAD
    weights = torch.randn(6, 7, 24, dtype=torch.float64)

    def run(packed):
        encoder.zero_grad()
        outputs, (h, c) = encoder(src, lengths, packed=packed)
        (outputs * weights).sum().add(h.sin().sum()).add(c.cos().sum()).backward()
        return [outputs, h, c], {name: p.grad.clone() for name, p in encoder.named_parameters()}

    (reference, reference_grads), (padded, padded_grads) = run(True), run(False)
    assert (padded[0][src == PAD] == 0).all()
    for got, want in zip(padded, reference):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for name, grad in reference_grads.items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(padded_grads[name], grad, rtol=1e-10, atol=1e-12, msg=name)
