"""The sequence-to-sequence model: `Encoder` -> `Attention` -> `Decoder`, put together by `Seq2Seq`. The
decoder's step has two fast paths, each behind one seam (see `decoder`): `recurrence` for training and
`search_step` for search; `recurrence.stacked_layers` builds the per-layer weight matrices both use."""

from nmt.model.decoder import DecoderState, Memory
from nmt.model.seq2seq import Seq2Seq

__all__ = ["Seq2Seq", "Memory", "DecoderState"]
