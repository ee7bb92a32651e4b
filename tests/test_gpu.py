"""GPU paths: run by scripts/gpu_check.sh on a machine with a CUDA GPU; skipped elsewhere."""

import pytest
import torch

from nmt.batching import source_tensor
from nmt.config import Config, ModelConfig
from nmt.model import Seq2Seq
from nmt.search import beam_search, greedy
from tests.conftest import trainer_from_parts

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")]


def harness(precision):
    cfg = Config()
    cfg.model = ModelConfig(emb_dim=64, hidden_size=128, layers=2, dropout=0.0)
    cfg.train.precision, cfg.train.device = precision, "cuda"
    return trainer_from_parts(cfg, [[5, 6, 7, 8], [9, 10]], [[11, 12], [13, 14, 15]], (50, 60))


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_training_step_on_gpu_keeps_float32_weights_and_clips_the_true_norm(precision):
    trainer, batch = harness(precision)
    reference, _ = harness("fp32")
    _, norm, applied = trainer.train_step(batch)
    _, reference_norm, _ = reference.train_step(batch)
    assert applied
    assert all(p.dtype == torch.float32 for p in trainer.params)
    assert norm == pytest.approx(reference_norm, rel=0.05)  # unscaled: fp16's loss scale is gone


def test_gpu_search_matches_cpu():
    torch.manual_seed(0)
    model = Seq2Seq(ModelConfig(emb_dim=32, hidden_size=64, layers=2, dropout=0.0), 40, 40).eval()
    src, lengths = source_tensor([[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]])
    cpu_greedy = [h.tokens for h in greedy(model, src, lengths)]
    cpu_beam = [h[0].tokens for h in beam_search(model, src, lengths, beam_size=4)]
    model.cuda()
    assert [h.tokens for h in greedy(model, src.cuda(), lengths)] == cpu_greedy
    assert [h[0].tokens for h in beam_search(model, src.cuda(), lengths, beam_size=4)] == cpu_beam
