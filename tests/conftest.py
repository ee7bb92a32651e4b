import contextlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
TINY_DATA = ROOT / "tests" / "data" / "tiny"
TINY_CONFIG = ROOT / "configs" / "tiny.yaml"

# Sentencepiece models are cached by content hash; keep the tests' cache out of the user's home.
os.environ.setdefault("NMT_CACHE", tempfile.mkdtemp(prefix="nmt-test-cache-"))
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(2)


# the ways a cache file is found damaged: another program's JSON, a value of the wrong types, a write cut short
DAMAGE = ["list", "string", "wrong types", "truncated"]


def damage_file(path: Path, damage: str, wrong_types: object) -> bytes:
    """Replace the cache file `path` by a damaged one (`wrong_types`: its content for "wrong types", as bytes or
    as a value written as JSON); its bytes."""
    wrong = wrong_types if isinstance(wrong_types, bytes) else json.dumps(wrong_types).encode()
    content = {"list": b"[1, 2, 3]\n", "string": b'"a string"\n', "wrong types": wrong,
               "truncated": path.read_bytes()[: path.stat().st_size // 2]}[damage]
    path.write_bytes(content)
    return content


def run_nmt(*args: str, cwd: Path | None = None, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """`nmt ARGS` in a fresh process, as a user would run it."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "nmt", *args], cwd=cwd or ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout, **kwargs)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A trained tiny run directory, shared by the tests that only read it."""
    run_dir = tmp_path_factory.mktemp("tiny") / "run"
    result = run_nmt("train", "--config", str(TINY_CONFIG), "--run-dir", str(run_dir))
    assert result.returncode == 0, result.stderr
    return run_dir


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """The tokenizer `nmt train` prepares for the tiny config: trained on its data, vocabularies pruned."""
    from nmt.config import load_config
    from nmt.data.prepare import prepare

    return prepare(load_config(TINY_CONFIG)).tokenizer


def train_tokenizer(settings, src: list[str], tgt: list[str]):
    """Sentencepiece trained (or found in the cache) as `nmt train` trains it, on the pairs (`src`, `tgt`)
    written as a plain-text training split; its vocabularies not pruned."""
    from nmt.data.prepare import train_on_sample
    from nmt.data.streams import TextPairs

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for lang, texts in (("en", src), ("de", tgt)):
            (folder / f"train.{lang}").write_text("".join(text + "\n" for text in texts), encoding="utf-8")
        stream = TextPairs(folder / "train.en", folder / "train.de", str(folder))
        return train_on_sample(settings, stream, len(stream))


@contextlib.contextmanager
def forced_routes(step: str, bulk: str, prepacked: bool, gradients: str = ""):
    """The float32 product routes given (prepacked search and recurrence weights alike), whatever this machine
    would choose, for the block; `gradients` follows `bulk` unless given."""
    from nmt.model import gemm

    previous = gemm._routes
    gemm._routes = gemm.Routes(step, bulk, prepacked and gemm.ONEDNN, "forced by a test",
                               step_prepacked=prepacked and gemm.ONEDNN, gradients=gradients)
    try:
        yield
    finally:
        gemm._routes = previous


@pytest.fixture(params=["onednn", "torch"])
def route(request):
    """Every test that takes this runs once with each float32 product route (oneDNN with prepacked search
    and recurrence weights, and torch's BLAS), whatever this machine would choose: both ship."""
    from nmt.model import gemm

    if request.param == "onednn" and not gemm.ONEDNN:
        pytest.skip("this torch has no oneDNN")
    with forced_routes(request.param, request.param, request.param == "onednn"):
        yield request.param


def trainer_from_parts(cfg, src: list[list[int]], tgt: list[list[int]], vocab_sizes: tuple[int, int]):
    """A `Trainer` on a few pairs of model ids, without a corpus or a tokenizer; returns it and one batch of
    all the pairs (on the trainer's device)."""
    from types import SimpleNamespace

    from nmt.batching import collate
    from nmt.data.prepare import PreparedData
    from nmt.data.sources import Corpus
    from nmt.data.store import TokenizedPairs
    from nmt.distributed import World
    from nmt.train import Trainer

    sizes = SimpleNamespace(src=range(vocab_sizes[0]), tgt=range(vocab_sizes[1]))  # only their lengths are read
    text = Corpus(["x"] * len(src), ["y"] * len(tgt), "pairs")
    pairs = TokenizedPairs.from_lists(src, tgt)
    data = PreparedData(sizes, pairs, text, pairs, None)
    trainer = Trainer(cfg, Path(tempfile.mkdtemp()), World(), None, data=data)
    return trainer, collate(pairs, list(range(len(src)))).to(trainer.device)
