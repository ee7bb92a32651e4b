"""What a validation measures: the model's per-token loss on the validation pairs (teacher-forced, the
training loss) and the BLEU of its decoding of their sources with the validation beam."""

from __future__ import annotations

import dataclasses
import math
import sys

import torch

from nmt.batching import collate, plan_batches
from nmt.config import Config
from nmt.data.prepare import PreparedData
from nmt.device import autocast
from nmt.loss import summed_nll
from nmt.model import Seq2Seq
from nmt.scoring import bleu
from nmt.tokenizer import PAD
from nmt.translator import Translator


def validation_scores(model: Seq2Seq, data: PreparedData, cfg: Config, device: torch.device,
                      precision: str) -> dict:
    """valid_loss (mean NLL per target token), valid_ppl and valid_bleu of `model`, which must be in eval
    mode (no dropout)."""
    total_nll, total_tokens = 0.0, 0
    plan = plan_batches(data.valid_ids.src_lengths, data.valid_ids.tgt_lengths, batch_tokens=cfg.train.batch_tokens,
                        batch_sentences=None, seed=0, epoch=0, shuffle=False)
    with torch.inference_mode(), autocast(device, precision):
        for indices in plan:
            batch = collate(data.valid_ids, indices).to(device)
            real = batch.tgt_out != PAD
            logits = model(batch.src, batch.src_lengths, batch.tgt_in, real)
            total_nll += summed_nll(logits, batch.tgt_out[real]).item()
            total_tokens += batch.n_tokens
    decode = dataclasses.replace(cfg.decode, beam_size=cfg.decode.valid_beam_size)
    hypotheses = Translator(model, data.tokenizer, decode, device=device, precision=precision).translate(
        data.valid.src, progress=sys.stderr.isatty())  # beside the epoch's bar, gone when done
    valid_loss = total_nll / max(1, total_tokens)
    return {"valid_loss": valid_loss, "valid_ppl": math.exp(min(valid_loss, 100)),
            "valid_bleu": bleu(hypotheses, data.valid.tgt)}
