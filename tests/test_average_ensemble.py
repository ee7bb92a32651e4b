"""Checkpoint averaging, kept checkpoints and ensembles."""

import pytest
import torch

from nmt import checkpoint
from nmt.config import DecodeConfig
from nmt.errors import NMTError
from nmt.model.search_step import Ensemble, for_search
from nmt.search import search
from nmt.translator import Translator
from tests.conftest import TINY_CONFIG, TINY_DATA, run_nmt
from tests.test_errors import check_error


@pytest.fixture
def two_checkpoints(tiny_run, tmp_path):
    """The tiny run's best checkpoint as A, and B: the same with every weight set to zero (so the mean is
    exactly half of A's weights)."""
    payload = checkpoint.load(tiny_run / "checkpoints" / "best.pt")
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    checkpoint.save(payload, a)
    payload["model"] = {k: torch.zeros_like(v) for k, v in payload["model"].items()}
    checkpoint.save(payload, b)
    return a, b


def test_the_average_of_two_checkpoints_is_their_mean(two_checkpoints, tmp_path, caplog):
    a, b = two_checkpoints
    averaged = checkpoint.average([a, b])
    assert "same weights" not in caplog.text
    original = checkpoint.load(a)["model"]
    for key, value in original.items():
        assert torch.equal(averaged["model"][key], value / 2), key
    assert averaged["tokenizer"]["src_keep"] == checkpoint.load(a)["tokenizer"]["src_keep"]
    assert "optimizer" not in averaged  # decoding only: never resumed from


def test_average_from_the_command_line_translates(two_checkpoints, tmp_path):
    a, b = two_checkpoints
    out = tmp_path / "avg.pt"
    result = run_nmt("average", str(a), str(a), "--out", str(out))
    assert result.returncode == 0, result.stderr
    same = run_nmt("translate", "--checkpoint", str(out), "--input", str(TINY_DATA / "test.en"))
    single = run_nmt("translate", "--checkpoint", str(a), "--input", str(TINY_DATA / "test.en"))
    assert same.returncode == 0 and same.stdout == single.stdout  # the mean of a model with itself is the model
    assert f"{a} holds the same weights as {a}: they count twice" in result.stderr  # said, not silent
    check_error(run_nmt("average", str(a), str(b), "--out", str(a)), str(a))  # never over an input


def test_average_refuses_other_shapes_and_other_tokenizers(two_checkpoints, tmp_path):
    a, b = two_checkpoints
    payload = checkpoint.load(b)
    key = next(iter(payload["model"]))
    payload["model"][key] = torch.zeros(3, 3)
    checkpoint.save(payload, b)
    with pytest.raises(NMTError, match=f"its model differs .*{key}"):
        checkpoint.average([a, b])
    payload = checkpoint.load(a)
    payload["tokenizer"]["tgt_keep"] = payload["tokenizer"]["tgt_keep"][:-1]
    checkpoint.save(payload, b)
    with pytest.raises(NMTError, match="its tokenizer differs"):
        checkpoint.average([a, b])


def test_training_keeps_the_last_n_checkpoints_for_average_last(tmp_path):
    run = tmp_path / "run"
    result = run_nmt("train", "--config", str(TINY_CONFIG), "--run-dir", str(run), "--set", "train.max_steps=40",
                     "--set", "train.valid_every=10", "--set", "train.keep_checkpoints=2",
                     "--set", "data.test_split=null")
    assert result.returncode == 0, result.stderr
    kept = [p.name for p in checkpoint.step_checkpoints(run / "checkpoints")]
    assert kept == ["step_00000030.pt", "step_00000040.pt"]
    out = tmp_path / "avg.pt"
    assert run_nmt("average", "--last", "2", "--run-dir", str(run), "--out", str(out)).returncode == 0
    assert checkpoint.load(out)["averaged_from"] == [str(run / "checkpoints" / name) for name in kept]
    check_error(run_nmt("average", "--last", "3", "--run-dir", str(run), "--out", str(tmp_path / "x.pt")),
                "fewer than --last 3", "train.keep_checkpoints=3")


def _translate(decoder, sources, beam):
    from nmt.batching import source_tensor

    src, lengths = source_tensor(sources)
    with torch.inference_mode():
        return search(decoder, src, lengths, beam_size=beam, alpha=0.6, max_len_ratio=2.0, nbest=1,
                      keep_attention=beam > 1)


@pytest.mark.parametrize("beam", [1, 5])
def test_an_ensemble_of_one_or_of_a_model_with_itself_is_that_model(tiny_run, beam):
    loaded = checkpoint.load_for_inference(tiny_run / "checkpoints" / "best.pt", torch.device("cpu"))
    lines = (TINY_DATA / "test.en").read_text(encoding="utf-8").splitlines()[:30]
    decode = DecodeConfig(max_src_len=100, beam_size=beam, length_penalty=0.6, max_len_ratio=2.0, batch_tokens=4000)
    sources = Translator(loaded.model, loaded.tokenizer, decode, device=torch.device("cpu")).encode(lines)
    single = _translate(for_search(loaded.model), sources, beam)
    for members in (1, 2):
        ensemble = _translate(Ensemble([for_search(loaded.model)] * members), sources, beam)
        for one, many in zip(single, ensemble):
            assert one[0].tokens == many[0].tokens
            assert one[0].score == pytest.approx(many[0].score, abs=1e-4)
            if beam > 1:
                assert torch.allclose(one[0].attention, many[0].attention, atol=1e-5)


def test_ensembles_from_the_command_line_and_mismatched_vocabularies(tiny_run, tmp_path):
    best = tiny_run / "checkpoints" / "best.pt"
    args = ("--input", str(TINY_DATA / "test.en"), "--beam-size", "3")
    single = run_nmt("translate", "--checkpoint", str(best), *args)
    pair = run_nmt("translate", "--checkpoint", str(best), "--checkpoint", str(best), *args)
    assert pair.returncode == 0, pair.stderr
    assert pair.stdout == single.stdout
    other = checkpoint.load(best)
    other["tokenizer"]["tgt_keep"] = other["tokenizer"]["tgt_keep"][:-1]
    other["model"]["decoder.embed.weight"] = other["model"]["decoder.embed.weight"][:-1]
    other["model"]["decoder.generator.weight"] = other["model"]["decoder.generator.weight"][:-1]
    other["model"]["decoder.generator.bias"] = other["model"]["decoder.generator.bias"][:-1]
    checkpoint.save(other, tmp_path / "other.pt")
    check_error(run_nmt("translate", "--checkpoint", str(best), "--checkpoint", str(tmp_path / "other.pt"), *args),
                "target vocabulary differs")
