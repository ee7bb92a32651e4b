"""The fused decoder recurrence must compute what autograd's step loop computes, gradients included."""

import pytest
import torch

from nmt.config import ModelConfig
from nmt.model import Seq2Seq
from nmt.tokenizer import EOS, PAD

SRC = torch.tensor([[5, 6, 7, EOS, PAD, PAD], [8, 9, 10, 11, 12, EOS], [4, EOS, PAD, PAD, PAD, PAD]])
SRC_LENGTHS = torch.tensor([4, 6, 2])
TGT_IN = torch.tensor([[2, 14, 15, PAD, PAD], [2, 16, 17, 18, 19], [2, 3, PAD, PAD, PAD]])


def outputs_and_gradients(fused, attention="general", input_feed=True, layers=2, dtype=torch.float64,
                          bf16=False, compiled=False, hidden=24):
    torch.manual_seed(0)
    cfg = ModelConfig(emb_dim=16, hidden_size=hidden, layers=layers, attention=attention, input_feed=input_feed,
                      dropout=0.3)
    model = Seq2Seq(cfg, 30, 40, fused_recurrence=fused, compiled_steps=compiled).to(dtype).train()
    torch.manual_seed(1)  # the same dropout masks for both paths
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = model(SRC, SRC_LENGTHS, TGT_IN)
    weights = torch.randn(logits.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    (logits.double() * weights).sum().backward()
    gradients = {name: p.grad.double() for name, p in model.named_parameters() if p.grad is not None}
    return logits.detach().double(), gradients


@pytest.mark.parametrize("attention,input_feed,layers", [
    ("general", True, 2), ("dot", True, 2), ("general", False, 2), ("general", True, 1), ("dot", True, 3),
])
def test_fused_recurrence_equals_autograds_step_loop_in_float64(attention, input_feed, layers):
    """Same outputs and the same gradient for every parameter, with dropout on."""
    reference, reference_grads = outputs_and_gradients(False, attention, input_feed, layers)
    fused, fused_grads = outputs_and_gradients(True, attention, input_feed, layers)
    torch.testing.assert_close(fused, reference, rtol=1e-10, atol=1e-12)
    assert fused_grads.keys() == reference_grads.keys()
    for name, grad in reference_grads.items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(fused_grads[name], grad, rtol=1e-9, atol=1e-11, msg=name)


def test_fused_recurrence_under_bf16_is_as_accurate_as_autograds():
    """Against the float64 truth, the fused bf16 gradients are no further off than autograd's bf16 ones."""
    _, truth = outputs_and_gradients(False)

    def relative_errors(gradients):
        return torch.tensor([((gradients[name] - grad).norm() / grad.norm()).item() for name, grad in truth.items()])

    autograd_errors = relative_errors(outputs_and_gradients(False, dtype=torch.float32, bf16=True)[1])
    fused_errors = relative_errors(outputs_and_gradients(True, dtype=torch.float32, bf16=True)[1])
    assert fused_errors.mean() < 1.25 * autograd_errors.mean()
    assert fused_errors.max() < 1.25 * autograd_errors.max()
    assert fused_errors.median() < 0.02


def test_keep_returns_exactly_the_kept_positions_logits():
    torch.manual_seed(0)
    model = Seq2Seq(ModelConfig(emb_dim=16, hidden_size=24, dropout=0.0), 30, 40).eval()
    keep = TGT_IN != PAD
    full = model(SRC, SRC_LENGTHS, TGT_IN)
    torch.testing.assert_close(model(SRC, SRC_LENGTHS, TGT_IN, keep), full[keep])


def test_trainer_fuses_on_the_cpu_unless_told_not_to(tmp_path):
    from nmt.config import load_config
    from nmt.distributed import World
    from nmt.train import Trainer
    from tests.conftest import TINY_CONFIG

    def fused(setting):
        cfg = load_config(TINY_CONFIG, [f"train.fused_recurrence={setting}", "train.device=cpu"])
        return Trainer(cfg, tmp_path / setting, World(), None).model.decoder.fused_recurrence

    assert fused("auto") and fused("true") and not fused("false")



@pytest.mark.parametrize("attention", ["general", "dot"])
def test_the_shipped_float32_training_loop_equals_autograds(attention, route):
    """In float32 through each product route this machine may pick: the loop training actually runs."""
    reference, reference_grads = outputs_and_gradients(False, attention, dtype=torch.float32)
    fused, fused_grads = outputs_and_gradients(True, attention, dtype=torch.float32)
    torch.testing.assert_close(fused, reference, rtol=1e-4, atol=1e-5)
    for name, grad in reference_grads.items():
        torch.testing.assert_close(fused_grads[name], grad, rtol=1e-3, atol=1e-4, msg=name)


@pytest.mark.parametrize("hidden", [14])  # odd per direction; other sizes reuse the compilation (dynamic sizes)
def test_the_compiled_steps_equal_autograds_step_loop(hidden):
    """torch.compile's steps (the GPU's fast path, an option on the CPU): float32 as tight as the shipped loop,
    bf16 as accurate as autograd's own bf16, at an odd size too."""
    reference, reference_grads = outputs_and_gradients(False, dtype=torch.float32, hidden=hidden)
    compiled, compiled_grads = outputs_and_gradients(True, dtype=torch.float32, compiled=True, hidden=hidden)
    torch.testing.assert_close(compiled, reference, rtol=1e-5, atol=1e-6)
    for name, grad in reference_grads.items():
        torch.testing.assert_close(compiled_grads[name], grad, rtol=1e-4, atol=1e-5, msg=name)
    _, truth = outputs_and_gradients(False, hidden=hidden)

    def relative_error(gradients):
        return max(((gradients[name] - grad).norm() / grad.norm()).item() for name, grad in truth.items())

    autograd_bf16 = outputs_and_gradients(False, dtype=torch.float32, bf16=True, hidden=hidden)[1]
    compiled_bf16 = outputs_and_gradients(True, dtype=torch.float32, bf16=True, compiled=True, hidden=hidden)[1]
    assert relative_error(compiled_bf16) < 1.25 * relative_error(autograd_bf16)


def test_compiling_on_a_cpu_without_a_cxx_compiler_is_one_clear_error(monkeypatch):
    from nmt.errors import NMTError
    from nmt.model.recurrence import check_compilable

    monkeypatch.setenv("CXX", "/nonexistent/g++")
    with pytest.raises(NMTError, match="needs a C\\+\\+ compiler"):
        check_compilable(torch.device("cpu"))
    check_compilable(torch.device("cuda"))  # Triton's compiler comes with torch


def test_an_unwritable_cache_compiles_for_the_process_with_one_warning(monkeypatch, tmp_path, caplog):
    from nmt.model import recurrence

    not_a_folder = tmp_path / "cache"
    not_a_folder.write_text("a file where the cache would be")
    monkeypatch.setenv("NMT_CACHE", str(not_a_folder))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    recurrence.compiled_steps.cache_clear()
    try:
        with caplog.at_level("WARNING"):
            recurrence.compiled_steps()
        import os

        assert "nmt-inductor-" in os.environ["TORCHINDUCTOR_CACHE_DIR"]
        assert len([r for r in caplog.records if "cannot write" in r.getMessage()]) == 1
    finally:
        recurrence.compiled_steps.cache_clear()
