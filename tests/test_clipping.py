"""Clipping follows the rule: if ||g|| >= threshold, g <- threshold * g / ||g||, else g unchanged."""

import math

import pytest
import torch

from nmt.config import Config, ModelConfig
from tests.conftest import trainer_from_parts


class StepHarness:
    """The trainer's own train_step on a small model, built from prepared parts instead of a corpus."""

    def __init__(self, max_grad_norm):
        cfg = Config()
        cfg.train.max_grad_norm, cfg.train.precision, cfg.train.device = max_grad_norm, "fp32", "cpu"
        cfg.model = ModelConfig(emb_dim=8, hidden_size=8, layers=1, dropout=0.0)
        self.trainer, self.batch = trainer_from_parts(cfg, [[5, 6, 7], [8, 9]], [[10, 11], [12, 13, 14]], (20, 20))

    def true_gradient(self):
        model = self.trainer.model
        model.zero_grad()
        logits = model(self.batch.src, self.batch.src_lengths, self.batch.tgt_in)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), self.batch.tgt_out.flatten(),
                                                 ignore_index=0, reduction="sum") / 2
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        return grads, math.sqrt(sum(float((g ** 2).sum()) for g in grads))

    def step(self):
        before = [p.detach().clone() for p in self.trainer.params]
        _, norm, applied = self.trainer.train_step(self.batch)
        updates = [b - p.detach() for b, p in zip(before, self.trainer.params)]  # lr 1: update = gradient used
        return norm, applied, updates


@pytest.mark.parametrize("scale", [0.5, 1.0, 3.0])  # threshold below, at, and above the true norm
def test_clipping_rule(scale):
    harness = StepHarness(max_grad_norm=None)
    grads, true_norm = harness.true_gradient()
    threshold = true_norm / scale
    harness.trainer.cfg.train.max_grad_norm = threshold
    logged_norm, applied, updates = harness.step()
    assert applied
    assert logged_norm == pytest.approx(true_norm, rel=1e-5)  # the logged norm is the pre-clip norm
    factor = min(1.0, threshold / true_norm)
    for update, grad in zip(updates, grads):
        torch.testing.assert_close(update, grad * factor, atol=1e-6, rtol=1e-4)
    update_norm = math.sqrt(sum(float((u ** 2).sum()) for u in updates))
    assert update_norm == pytest.approx(min(true_norm, threshold), rel=1e-4)


def test_clipping_keeps_the_direction():
    harness = StepHarness(max_grad_norm=None)
    grads, true_norm = harness.true_gradient()
    harness.trainer.cfg.train.max_grad_norm = true_norm / 10
    _, _, updates = harness.step()
    flat_update = torch.cat([u.flatten() for u in updates])
    flat_grad = torch.cat([g.flatten() for g in grads])
    cosine = torch.nn.functional.cosine_similarity(flat_update, flat_grad, dim=0)
    assert float(cosine) == pytest.approx(1.0, abs=1e-5)


def test_non_finite_gradient_skips_the_update():
    harness = StepHarness(max_grad_norm=5.0)
    with torch.no_grad():
        harness.trainer.model.decoder.generator.bias[10] = float("nan")
    before = [p.detach().clone() for p in harness.trainer.params]
    _, _, applied = harness.trainer.train_step(harness.batch)
    assert not applied
    for b, p in zip(before, harness.trainer.params):
        assert torch.equal(b.nan_to_num(), p.detach().nan_to_num())
