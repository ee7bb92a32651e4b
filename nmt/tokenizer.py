"""Sentencepiece subwords, with a per-side vocabulary of the pieces that training data uses.

A joint model shares pieces between languages, but most German pieces never occur in English and vice versa.
Each side's embedding and output tables hold only the pieces that side of the training data uses (and the four
specials), as the peers' vocabularies do, saving about a third of the output softmax; unseen pieces map to <unk>.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import multiprocessing
import os
import tempfile
from pathlib import Path

import sentencepiece as spm
import torch

from nmt.cache import cache_root, file_lock, set_aside, unwritable, written_whole
from nmt.config import TokenizerConfig
from nmt.errors import NMTError

log = logging.getLogger(__name__)

PAD, UNK, BOS, EOS = 0, 1, 2, 3
SPECIALS = 4


def cache_dir() -> Path:
    return cache_root() / "sentencepiece"


class Side:
    """One language side: a sentencepiece model and the ids its model tables keep."""

    def __init__(self, model_proto: bytes, keep: list[int] | None = None):
        self.model_proto = model_proto
        self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self.keep = keep if keep is not None else list(range(self.sp.get_piece_size()))
        # (pieces,) model id of every sentencepiece id (<unk> for pieces without a table row)
        self.to_model = torch.full((self.sp.get_piece_size(),), UNK, dtype=torch.long)
        self.to_model[torch.tensor(self.keep)] = torch.arange(len(self.keep))

    def __len__(self) -> int:
        return len(self.keep)

    def encode(self, texts: list[str]) -> list[list[int]]:
        return [self.to_model[ids].tolist() if ids else [] for ids in self.sp.encode(texts)]

    def decode(self, ids: list[int]) -> str:
        return self.sp.decode([self.keep[i] for i in ids if i >= SPECIALS])

    def pieces(self, ids: list[int]) -> list[str]:
        return [self.sp.id_to_piece(self.keep[i]) for i in ids]

    def keeping(self, pieces: list[int]) -> Side:
        """This model with table rows for the specials and `pieces` (sentencepiece ids)."""
        return Side(self.model_proto, list(range(SPECIALS)) + sorted(set(pieces) - set(range(SPECIALS))))


class Tokenizer:
    def __init__(self, src: Side, tgt: Side, joint: bool):
        self.src, self.tgt, self.joint = src, tgt, joint

    def state_dict(self) -> dict:
        """Plain types only, so a checkpoint loads with `weights_only=True`."""
        return {"joint": self.joint,
                "src_model": torch.frombuffer(bytearray(self.src.model_proto), dtype=torch.uint8),
                "tgt_model": torch.frombuffer(bytearray(self.tgt.model_proto), dtype=torch.uint8),
                "src_keep": self.src.keep, "tgt_keep": self.tgt.keep}

    @classmethod
    def from_state_dict(cls, state: dict) -> Tokenizer:
        src, tgt = (Side(state[f"{side}_model"].numpy().tobytes(), state[f"{side}_keep"]) for side in ("src", "tgt"))
        return cls(src, tgt, state["joint"])

    def save_models(self, folder: Path) -> None:
        names = ["spm.model"] if self.joint else ["spm.src.model", "spm.tgt.model"]  # joint: one model for both
        for name, side in zip(names, (self.src, self.tgt)):
            (folder / name).write_bytes(side.model_proto)


TRAIN_IN_CHILD_LINES = 200_000


def _train_on_file(corpus: str, **settings) -> bytes:
    """The model's bytes. The text is given as an iterator, not a file name, so the model does not record
    where the text was (a temporary file): the same text and settings give the same bytes."""
    model = io.BytesIO()
    with open(corpus, encoding="utf-8") as lines:
        spm.SentencePieceTrainer.train(sentence_iterator=(line.rstrip("\n") for line in lines), model_writer=model,
                                       **settings)
    return model.getvalue()


def cached_model(cfg: TokenizerConfig, key: str, write_corpus) -> bytes:
    """The sentencepiece model cached under `key`, or one trained on what `write_corpus(path)` writes
    there (one sentence a line) and then cached. `key` must name the text and the settings."""
    settings = f"{cfg.vocab_size}|{cfg.model_type}|{cfg.character_coverage}|{cfg.max_sentences}|{PAD}{UNK}{BOS}{EOS}"
    cached = cache_dir() / f"{hashlib.sha256(f'{settings}|{key}'.encode()).hexdigest()[:32]}.model"
    if (proto := _read_cached(cached)) is not None:
        return proto
    try:  # a second process preparing the same data waits, then reads this one's model (minutes, and
        # gigabytes, at WMT size); where the cache cannot be written each process trains its own
        cached.parent.mkdir(parents=True, exist_ok=True)
        lock = file_lock(cached.with_suffix(".lock"), f"sentencepiece: another process is training {cached.name}; "
                         "waiting for it")
    except OSError:
        lock = contextlib.nullcontext()
    with lock:
        proto = _read_cached(cached)  # trained by the process this one waited for
        if proto is None:
            proto = _train_model(cfg, write_corpus)
            try:
                cached.parent.mkdir(parents=True, exist_ok=True)
                with written_whole(cached) as partial:
                    partial.write_bytes(proto)
            except OSError as error:
                unwritable(cached, error, "this process uses the model it trained, and the next one trains it again")
    return proto


def _read_cached(cached: Path) -> bytes | None:
    """The cached model if it is one these settings could have trained; a damaged one is set aside."""
    try:
        proto = cached.read_bytes()
    except (FileNotFoundError, NotADirectoryError):  # none yet
        return None
    except OSError as error:
        log.warning("sentencepiece: cannot read %s (%s); training the model again", cached, error.strerror or error)
        return None
    if problem := _model_problem(proto):
        set_aside(cached, problem, "training the model again")
        return None
    log.info("sentencepiece: reusing %s (same data and settings)", cached)
    return proto


def _model_problem(proto: bytes) -> str | None:
    """Why `proto` is not a model these settings train, or None."""
    if not proto:
        return "empty"
    try:
        sp = spm.SentencePieceProcessor(model_proto=proto)
    except (RuntimeError, OSError, TypeError):
        return "not a sentencepiece model (corrupt or truncated)"
    specials = (sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id())
    if specials != (PAD, UNK, BOS, EOS):
        return f"its special ids are {specials}, not {(PAD, UNK, BOS, EOS)}"
    if sp.get_piece_size() <= SPECIALS:
        return f"it has {sp.get_piece_size()} pieces, none beyond the special ones"
    return None


def _train_model(cfg: TokenizerConfig, write_corpus) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        lines = write_corpus(corpus)
        log.info("sentencepiece: training a %s model, vocab %d, on %d lines", cfg.model_type, cfg.vocab_size, lines)
        options = dict(vocab_size=cfg.vocab_size, model_type=cfg.model_type, character_coverage=cfg.character_coverage,
                       input_sentence_size=0,  # callers write at most tokenizer.max_sentences lines, sampled
                       pad_id=PAD, unk_id=UNK, bos_id=BOS, eos_id=EOS, hard_vocab_limit=False,
                       num_threads=os.cpu_count() or 1, minloglevel=2, seed_sentencepiece_size=1_000_000)
        try:
            if lines > TRAIN_IN_CHILD_LINES:
                # in a child process: its few GB of working memory go back to the system when it ends,
                # instead of staying the high-water mark of the training process
                with multiprocessing.get_context("spawn").Pool(1) as pool:
                    return pool.apply(_train_on_file, (str(corpus),), options)
            return _train_on_file(str(corpus), **options)
        except RuntimeError as error:
            message = str(error).splitlines()[0] if str(error) else type(error).__name__
            advice = ("raise tokenizer.vocab_size: the text has more distinct characters than that"
                      if "required_chars" in message or "smaller than" in message else
                      "lower tokenizer.vocab_size: the text has too few distinct pieces for it")
            raise NMTError(f"sentencepiece training failed ({message}); {advice}") from None
