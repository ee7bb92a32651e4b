"""The sequence-to-sequence model: `Encoder` -> `Attention` -> `Decoder`, put together by `Seq2Seq`.

`decoder.Decoder._advance` defines one decoder step. Two fast paths compute the same thing, each behind
one seam: `recurrence.Recurrence`, the teacher-forced training loop with its own backward (chosen when the
model is built, `fused_recurrence=True`), and `search_step.FastStep`, the step search runs, built once per
translation job by `search_step.for_search(model)`. `layout` builds the per-layer weight matrices both use.
"""

from nmt.model.decoder import DecoderState, Memory
from nmt.model.seq2seq import Seq2Seq

__all__ = ["Seq2Seq", "Memory", "DecoderState"]
