"""Sentencepiece subwords, with a per-side vocabulary of the pieces that training data uses.

A joint model shares pieces between languages, but most German pieces never
occur in English and vice versa. Each side's embedding and output tables hold
only the pieces that occur on that side of the training data (plus the four
specials), which is what the peers' vocabularies are and saves about a third
of the output softmax. Unseen pieces map to <unk>.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

import sentencepiece as spm
import torch

from nmt.config import TokenizerConfig
from nmt.errors import NMTError

log = logging.getLogger(__name__)

PAD, UNK, BOS, EOS = 0, 1, 2, 3
SPECIALS = 4


def cache_dir() -> Path:
    return Path(os.environ.get("NMT_CACHE", Path.home() / ".cache" / "nmt")) / "sentencepiece"


class Side:
    """One language side: a sentencepiece model and the ids its model tables keep."""

    def __init__(self, model_proto: bytes, keep: list[int] | None = None):
        self.model_proto = model_proto
        self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self.keep = keep if keep is not None else list(range(self.sp.get_piece_size()))
        self._to_model = torch.full((self.sp.get_piece_size(),), UNK, dtype=torch.long)
        self._to_model[torch.tensor(self.keep)] = torch.arange(len(self.keep))

    def __len__(self) -> int:
        return len(self.keep)

    def encode(self, texts: list[str]) -> list[list[int]]:
        return self.from_spm(self.sp.encode(texts))

    def from_spm(self, encoded_spm: list[list[int]]) -> list[list[int]]:
        return [self._to_model[ids].tolist() if ids else [] for ids in encoded_spm]

    def spm_ids(self, ids: list[int]) -> list[int]:
        return [self.keep[i] for i in ids if i >= SPECIALS]

    def decode(self, ids: list[int]) -> str:
        return self.sp.decode(self.spm_ids(ids))

    def pieces(self, ids: list[int]) -> list[str]:
        return [self.sp.id_to_piece(self.keep[i]) for i in ids]

    def pruned(self, encoded_spm: list[list[int]]) -> Side:
        used = {i for ids in encoded_spm for i in ids} - set(range(SPECIALS))
        return Side(self.model_proto, list(range(SPECIALS)) + sorted(used))


class Tokenizer:
    def __init__(self, src: Side, tgt: Side, joint: bool):
        self.src, self.tgt, self.joint = src, tgt, joint

    def state_dict(self) -> dict:
        """Plain types only, so a checkpoint loads with `weights_only=True`."""
        return {
            "joint": self.joint,
            "src_model": torch.frombuffer(bytearray(self.src.model_proto), dtype=torch.uint8),
            "tgt_model": torch.frombuffer(bytearray(self.tgt.model_proto), dtype=torch.uint8),
            "src_keep": self.src.keep,
            "tgt_keep": self.tgt.keep,
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> Tokenizer:
        src = Side(state["src_model"].numpy().tobytes(), state["src_keep"])
        tgt = Side(state["tgt_model"].numpy().tobytes(), state["tgt_keep"])
        return cls(src, tgt, state["joint"])

    def save_models(self, folder: Path) -> None:
        if self.joint:
            (folder / "spm.model").write_bytes(self.src.model_proto)
        else:
            (folder / "spm.src.model").write_bytes(self.src.model_proto)
            (folder / "spm.tgt.model").write_bytes(self.tgt.model_proto)


def _train_model(cfg: TokenizerConfig, texts: list[str]) -> bytes:
    """Train one sentencepiece model, or reuse the cached one trained on the same text and settings."""
    settings = f"{cfg.vocab_size}|{cfg.model_type}|{cfg.character_coverage}|{cfg.max_sentences}|{PAD}{UNK}{BOS}{EOS}"
    digest = hashlib.sha256(settings.encode())
    for text in texts:
        digest.update(text.encode("utf-8") + b"\n")
    cached = cache_dir() / f"{digest.hexdigest()[:32]}.model"
    if cached.is_file():
        proto = cached.read_bytes()
        try:
            spm.SentencePieceProcessor(model_proto=proto)
            log.info("sentencepiece: reusing %s (same data and settings)", cached)
            return proto
        except (RuntimeError, OSError, TypeError):  # a damaged cache entry: rebuild it, never fail on it
            log.warning("sentencepiece: the cached %s is corrupt; training it again", cached)
            cached.unlink(missing_ok=True)
    log.info("sentencepiece: training a %s model, vocab %d, on %d lines", cfg.model_type, cfg.vocab_size, len(texts))
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text("\n".join(t.replace("\n", " ") for t in texts) + "\n", encoding="utf-8")
        try:
            spm.SentencePieceTrainer.train(
                input=str(corpus), model_prefix=str(Path(tmp) / "spm"), vocab_size=cfg.vocab_size,
                model_type=cfg.model_type, character_coverage=cfg.character_coverage,
                input_sentence_size=cfg.max_sentences, shuffle_input_sentence=cfg.max_sentences > 0,
                pad_id=PAD, unk_id=UNK, bos_id=BOS, eos_id=EOS, hard_vocab_limit=False,
                num_threads=os.cpu_count() or 1, minloglevel=2, seed_sentencepiece_size=1_000_000,
            )
        except RuntimeError as error:
            message = str(error).splitlines()[0] if str(error) else type(error).__name__
            advice = ("raise tokenizer.vocab_size: the text has more distinct characters than that"
                      if "required_chars" in message or "smaller than" in message else
                      "lower tokenizer.vocab_size: the text has too few distinct pieces for it")
            raise NMTError(f"sentencepiece training failed ({message}); {advice}") from None
        proto = (Path(tmp) / "spm.model").read_bytes()
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_suffix(f".{os.getpid()}.tmp")
        partial.write_bytes(proto)
        os.replace(partial, cached)
    except OSError as error:
        raise NMTError(f"cannot write the sentencepiece cache in {cached.parent} ({error.strerror or error}); "
                       "set NMT_CACHE to a writable folder") from None
    return proto


def train_tokenizer(cfg: TokenizerConfig, src_texts: list[str], tgt_texts: list[str]) -> Tokenizer:
    """Train (or reuse) sentencepiece on the training split; the vocabularies are pruned later."""
    if cfg.joint:
        proto = _train_model(cfg, src_texts + tgt_texts)
        return Tokenizer(Side(proto), Side(proto), joint=True)
    return Tokenizer(Side(_train_model(cfg, src_texts)), Side(_train_model(cfg, tgt_texts)), joint=False)


def prune_to_training_data(tokenizer: Tokenizer, src_texts: list[str], tgt_texts: list[str]):
    """Keep on each side only the pieces its training text uses; return both sides' model ids."""
    src_spm, tgt_spm = tokenizer.src.sp.encode(src_texts), tokenizer.tgt.sp.encode(tgt_texts)
    tokenizer.src, tokenizer.tgt = tokenizer.src.pruned(src_spm), tokenizer.tgt.pruned(tgt_spm)
    return tokenizer.src.from_spm(src_spm), tokenizer.tgt.from_spm(tgt_spm)
