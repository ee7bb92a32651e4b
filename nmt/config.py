"""Typed run configuration: dataclasses loaded from YAML, with `--set a.b=value` overrides.

Every key is documented here, once, next to its default. The defaults are the packaged default run
(`configs/multi30k_en_de.yaml`): Multi30k en->de from the hub with a GPU-sized model, so `nmt train` with no
arguments trains it. Unknown keys and wrong types are rejected with the nearest valid key named.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from nmt.cache import written_whole
from nmt.config_file import read_config_file
from nmt.errors import NMTError

POSITIVE = ("a finite number above 0", lambda v: math.isfinite(v) and v > 0)
AT_LEAST_1 = ("at least 1", lambda v: v >= 1)
AT_LEAST_0 = ("at least 0", lambda v: v >= 0)
_FRACTION_BELOW_1 = ("at least 0 and below 1", lambda v: 0 <= v < 1)
# decoding settings, also translate's flags; bounded: a huge ratio overflows the length limit, a huge alpha the penalty
DECODE_RANGES = {"beam_size": AT_LEAST_1, "length_penalty": ("at least 0 and at most 10", lambda v: 0 <= v <= 10),
                 "max_len_ratio": ("above 0 and at most 100", lambda v: 0 < v <= 100), "batch_tokens": AT_LEAST_1,
                 "max_src_len": AT_LEAST_1, "valid_beam_size": AT_LEAST_1}


def check_range(setting: str, value, rule: tuple[str, typing.Callable]) -> None:
    """The one range check, of config keys and flags alike: one line naming `setting` as the user wrote it
    (`train.lr=-1.0`, `--beam-size 0`) and the range. None (null, a flag not given) passes; nan fails."""
    allowed, ok = rule
    if value is not None and not ok(value):
        raise NMTError(f"{setting}: must be {allowed}")


def _check_ranges(section: str, config, rules: dict) -> None:
    for key, rule in rules.items():
        check_range(f"{section}.{key}={getattr(config, key)}", getattr(config, key), rule)


@dataclass
class DataConfig:
    #: a hub dataset, or a local folder in a hub dataset's layout or of text files `{split}.{lang}`, a sentence a line.
    dataset: str = "bentrevett/multi30k"
    #: hub configuration name, e.g. `de-en` for `wmt/wmt14`, `en-ko` for `Helsinki-NLP/opus-100`.
    dataset_config: str | None = None
    #: source and target language codes: column names, `translation` keys or file suffixes.
    src_lang: str = "en"
    tgt_lang: str = "de"
    #: split names; training, validation and test.
    train_split: str = "train"
    #: `validation`, `valid`, `val` and `dev` stand in for one another when the named one is missing.
    valid_split: str = "validation"
    #: null = no test split (the run then ends without a test score).
    test_split: str | None = "test"
    #: drop training pairs with more subword pieces than this on either side.
    max_len: int = 100
    #: drop training pairs whose longer side has more than this many times the pieces of the shorter.
    max_len_ratio: float = 3.0
    #: use at most this many training pairs (the first ones); null = all. For very large corpora.
    max_train_pairs: int | None = None
    #: processes that tokenize the training split when it is first prepared; 0 = one per CPU core.
    num_workers: int = 0

    def __post_init__(self):
        _check_ranges("data", self, {"max_len": AT_LEAST_1, "max_len_ratio": AT_LEAST_1,
                                     "max_train_pairs": AT_LEAST_1, "num_workers": AT_LEAST_0})


@dataclass
class TokenizerConfig:
    #: sentencepiece vocabulary size (per side when `joint` is false).
    vocab_size: int = 8000
    #: sentencepiece algorithm.
    model_type: Literal["unigram", "bpe"] = "unigram"
    #: one sentencepiece model for both languages (true) or one per side (false).
    joint: bool = True
    #: share of characters the model must cover; below 1.0 the rarest become <unk> (useful for Korean, Chinese).
    character_coverage: float = 1.0
    #: sentences sampled from the training split to train sentencepiece (0 = all); bounds its time and memory.
    max_sentences: int = 1_000_000

    def __post_init__(self):
        # sentencepiece needs room for its 4 special pieces and at least a few real ones
        _check_ranges("tokenizer", self, {"vocab_size": ("at least 8", lambda v: v >= 8),
                                          "character_coverage": ("above 0 and at most 1", lambda v: 0 < v <= 1),
                                          "max_sentences": AT_LEAST_0})


@dataclass
class ModelConfig:
    #: embedding size, source and target.
    emb_dim: int = 512
    #: decoder hidden size; the bidirectional encoder has `hidden_size / 2` per direction.
    hidden_size: int = 1024
    #: LSTM layers in the encoder and in the decoder.
    layers: int = 2
    #: Luong score: `dot` h_t.h_s, `general` h_t.W_a h_s, `concat` v.tanh(W [h_t; h_s]).
    attention: Literal["dot", "general", "concat"] = "general"
    #: feed the previous attentional vector into the decoder's next input (Luong et al. 2015).
    input_feed: bool = True
    #: dropout on embeddings, between LSTM layers and on the attentional vector.
    dropout: float = 0.3
    #: share the target embedding matrix with the output projection (needs emb_dim == hidden_size).
    tie_embeddings: bool = False
    #: parameters start uniform in [-init_range, init_range].
    init_range: float = 0.1

    def __post_init__(self):
        _check_ranges("model", self, {"emb_dim": AT_LEAST_1, "hidden_size": AT_LEAST_1, "layers": AT_LEAST_1,
                                      "dropout": _FRACTION_BELOW_1, "init_range": POSITIVE})
        if self.hidden_size % 2:
            raise NMTError(f"model.hidden_size={self.hidden_size}: must be even (the encoder's two directions "
                           "have half each)")
        if self.tie_embeddings and self.emb_dim != self.hidden_size:
            raise NMTError(f"model.tie_embeddings=true needs model.emb_dim == model.hidden_size (now {self.emb_dim} "
                           f"and {self.hidden_size}); make them equal or set model.tie_embeddings=false")


@dataclass
class TrainConfig:
    #: plain SGD (no momentum) or Adam.
    optimizer: Literal["sgd", "adam"] = "sgd"
    #: learning rate: 1.0 for SGD with clipping; about 1e-3 for Adam.
    lr: float = 1.0
    #: clip the global L2 gradient norm to this; null = no clipping (the norm is still logged).
    max_grad_norm: float | None = 5.0
    #: divide the summed token NLL by the number of `sentences` (Luong et al.) or of `tokens`.
    loss_norm: Literal["sentences", "tokens"] = "sentences"
    #: label smoothing of the training loss (0 = plain NLL); perplexity is always the plain NLL.
    label_smoothing: float = 0.0
    #: target tokens (padding included) per batch; ignored when `batch_sentences` is set.
    batch_tokens: int = 4096
    #: sentences per batch (the peers' 64); null = batch by `batch_tokens`.
    batch_sentences: int | None = None
    #: stop after this many epochs, or this many updates (null = no step limit).
    max_epochs: int = 20
    max_steps: int | None = None
    #: wall-clock training budget; training stops cleanly and still evaluates the test split.
    max_minutes: float | None = None
    #: validate every this many steps (and always at each epoch end); null = epoch ends only.
    valid_every: int | None = None
    #: also save last.pt every this many minutes, so a killed run loses at most that; null = at validations, epoch ends.
    save_every_minutes: float | None = 10.0
    #: keep the last N validations' checkpoints as `checkpoints/step_<step>.pt` (0 = none), for `nmt average --last N`.
    keep_checkpoints: int = 0
    #: when the rate decays: `budget` (below), `plateau` (validation perplexity stalls), `epoch` (Luong et al.), `none`.
    lr_schedule: Literal["budget", "plateau", "epoch", "none"] = "plateau"
    #: the factor each decay multiplies the rate by, the first epoch that decays (`epoch`: each from it on), the floor.
    lr_decay: float = 0.5
    decay_start_epoch: int = 8
    min_lr: float = 1e-4
    #: `budget`: the fraction of the budget (the first of max_minutes, max_steps and max_epochs to end the run: a slow
    #: machine anneals as a fast one) spent at the first decay, and the decays (0.5 and 5: at 50, 60, 70, 80 and 90%,
    #: ending at lr x lr_decay^5).
    budget_decay_start: float = 0.5
    budget_decays: int = 5
    #: stop after this many validations without a better BLEU; null = never.
    patience: int | None = 5
    #: seeds the initialisation, dropout and the batch order of every epoch.
    seed: int = 42
    #: `auto`: CUDA when a GPU is visible, else the CPU.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    #: `auto`: bf16 on a GPU that supports it and on a CPU with native bfloat16 (AVX-512-BF16 or AMX), else
    #: fp32. bf16 on a CPU without oneDNN bf16 kernels (AVX2) is refused. fp16 (GPU only) uses a gradient scaler.
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    #: CPU threads for torch; null = torch's default.
    threads: int | None = None
    #: the decoder's time loop as one autograd function with its own backward (same results, faster):
    #: `auto` = on the CPU; on a GPU autograd's loop with the fused CUDA LSTM cell is kept.
    fused_recurrence: Literal["auto"] | bool = "auto"
    #: that loop's element-wise steps by torch.compile, cached in $NMT_CACHE so that only a machine's first run
    #: compiles; `true` turns the fused loop on, on a GPU too. `auto` = off: the C kernels are faster on a CPU
    #: (docs/performance.md); scripts/gpu_check.sh measures a GPU.
    compile: Literal["auto"] | bool = "auto"
    #: write a metrics.jsonl record (and a log line) every this many steps.
    log_every: int = 50
    #: stop after this many consecutive steps with a non-finite loss or gradient norm.
    max_bad_steps: int = 10
    #: stop after this many consecutive batches that ran out of GPU memory.
    max_oom_batches: int = 5

    def __post_init__(self):
        if self.budget_decays < 1:
            raise NMTError(f"train.budget_decays={self.budget_decays}: must be at least 1; "
                           "for a constant rate use train.lr_schedule=none")
        if self.compile is True and self.fused_recurrence is False:
            raise NMTError("train.compile=true compiles the fused recurrence: set train.fused_recurrence to "
                           "true or auto, or train.compile to auto")
        _check_ranges("train", self, {
            "lr": POSITIVE, "max_grad_norm": POSITIVE, "label_smoothing": _FRACTION_BELOW_1, "batch_tokens": AT_LEAST_1,
            "batch_sentences": AT_LEAST_1, "max_epochs": AT_LEAST_1, "max_steps": AT_LEAST_1, "max_minutes": POSITIVE,
            "valid_every": AT_LEAST_1, "lr_decay": ("above 0 and at most 1", lambda v: 0 < v <= 1),
            "decay_start_epoch": AT_LEAST_1, "min_lr": AT_LEAST_0, "budget_decay_start": _FRACTION_BELOW_1,
            "patience": AT_LEAST_1, "threads": AT_LEAST_1, "log_every": AT_LEAST_1, "max_bad_steps": AT_LEAST_1,
            "max_oom_batches": AT_LEAST_1, "save_every_minutes": POSITIVE, "keep_checkpoints": AT_LEAST_0})


@dataclass
class DecodeConfig:
    """How validation, the final test evaluation and `nmt translate` decode by default."""

    #: beam size for the test evaluation and `nmt translate` (1 = greedy).
    beam_size: int = 5
    #: GNMT length penalty alpha: scores are divided by ((5 + len) / 6) ** alpha; 0 = raw log-prob.
    length_penalty: float = 1.0
    #: hypotheses stop at `max_len_ratio * source pieces + 5` pieces.
    max_len_ratio: float = 2.0
    #: source pieces per decoding batch (sentences are sorted by length inside).
    batch_tokens: int = 6000
    #: input lines longer than this many pieces are truncated (with a warning), never dropped.
    max_src_len: int = 250
    #: validation BLEU is computed with greedy search (fast) or with `beam_size`.
    valid_beam_size: int = 1

    def __post_init__(self):
        _check_ranges("decode", self, DECODE_RANGES)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _coerce(value, hint, where: str):
    """Check `value` against a field's type hint; ints pass as floats, nothing else is converted."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in (option for option in options if option is not type(None)):
            try:
                return _coerce(value, option, where)
            except NMTError as error:
                errors.append(str(error).removeprefix(f"{where}: "))
        raise NMTError(f"{where}: {'; or '.join(errors)}")
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise NMTError(f"{where}: {value!r} is not one of {', '.join(map(str, choices))}")
        return value
    if hint is float and (type(value) is int or isinstance(value, str) and _looks_numeric(value)):
        return float(value)  # an int, or text: YAML 1.1 reads 1e-3 as text
    if hint is str and isinstance(value, bool):
        raise NMTError(f"{where}: expected text, got {str(value).lower()} (YAML reads no, yes, on and off as "
                       f"true or false); quote it, e.g. '{'yes' if value else 'no'}'")
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):  # a bool is an int to Python
        expected = {bool: "true or false", int: "an integer"}.get(hint, hint.__name__)
        raise NMTError(f"{where}: expected {expected}, got {value!r}")
    return value


def _build(cls, values: dict, prefix: str, source: str):
    if not isinstance(values, dict):
        raise NMTError(f"{source}: '{prefix.rstrip('.') or 'config'}' must be a mapping of keys to values")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in names:  # named in full (`train.lr_schedule`), as a user writes it after --set
            match = difflib.get_close_matches(str(key), names, n=1, cutoff=0.5)
            nearest = f"did you mean '{prefix}{match[0]}'?" if match else f"valid keys: {', '.join(names)}"
            raise NMTError(f"{source}: unknown key '{prefix}{key}'; {nearest}")
        hint = hints[key]
        kwargs[key] = (_build(hint, value or {}, f"{prefix}{key}.", source) if dataclasses.is_dataclass(hint)
                       else _coerce(value, hint, f"{source}: {prefix}{key}"))
    try:
        return cls(**kwargs)
    except NMTError as error:  # a range check: name where the value came from
        raise NMTError(f"{source}: {error}") from None


def config_from_dict(values: dict, source: str = "config") -> Config:
    return _build(Config, values or {}, "", source)


def parse_override(text: str) -> tuple[list[str], object]:
    """`train.lr=0.5` -> (['train', 'lr'], 0.5); the value is read as YAML (`null`, `true`, `1e-3`)."""
    if "=" not in text:
        raise NMTError(f"--set {text}: expected KEY=VALUE, e.g. --set train.lr=0.5")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str) and _looks_numeric(raw):  # YAML reads 1e-3 as a string
        value = float(raw)
    return key.strip().split("."), value


def _looks_numeric(raw: str) -> bool:
    try:
        float(raw)
    except ValueError:
        return False
    return True


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """The dataclass defaults, then the YAML file, then `--set` overrides, validated together."""
    source = "config" if path is None else str(path)
    file_values = {} if path is None else read_config_file(Path(path))
    values = apply_overrides(copy.deepcopy(file_values), overrides)
    try:
        return config_from_dict(values, source)
    except NMTError as error:
        if overrides and _is_valid(file_values, source):  # then the error is in an override: say so
            raise NMTError("--set" + str(error).removeprefix(source)) from None
        raise


def _is_valid(values: dict, source: str) -> bool:
    try:
        config_from_dict(values, source)
    except NMTError:
        return False
    return True


def apply_overrides(values: dict, overrides: list[str]) -> dict:
    """Set each `section.key=value` of `--set` in a nested dict of config values, in place."""
    for text in overrides:
        keys, value = parse_override(text)
        node = values
        for key in keys[:-1]:
            if node.get(key) is None:  # absent, or a section left empty in the file (`train:`)
                node[key] = {}
            node = node[key]
            if not isinstance(node, dict):
                raise NMTError(f"--set {text}: '{key}' is not a section")
        node[keys[-1]] = value
    return values


def save_config(config: Config, path: Path) -> None:
    with written_whole(path) as partial:
        partial.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), encoding="utf-8")
