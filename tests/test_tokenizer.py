
import io
import logging
import threading

import pytest
import sentencepiece as spm

from nmt.config import TokenizerConfig
from nmt.tokenizer import BOS, EOS, PAD, UNK, Tokenizer, cache_dir, cached_model
from tests.conftest import DAMAGE, damage_file, train_tokenizer


def test_round_trip_and_fixed_special_ids(tiny_tokenizer):
    text = "Der kleine Hund sieht das rote Auto ."
    ids = tiny_tokenizer.tgt.encode([text])[0]
    assert ids and min(ids) >= 4
    assert tiny_tokenizer.tgt.decode(ids) == text
    sp = tiny_tokenizer.tgt.sp
    assert (sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id()) == (PAD, UNK, BOS, EOS)


def test_vocabularies_hold_only_pieces_seen_on_their_side(tiny_tokenizer):
    # German-only pieces never occur in English: the source table is smaller than the joint model
    assert len(tiny_tokenizer.src) < tiny_tokenizer.src.sp.get_piece_size()
    assert "Hund" not in " ".join(tiny_tokenizer.src.pieces(range(len(tiny_tokenizer.src))))


def test_unseen_source_text_maps_to_unk(tiny_tokenizer):
    ids = tiny_tokenizer.src.encode(["Hund"])[0]  # German, not seen on the English side
    assert UNK in ids


def test_state_dict_round_trip(tiny_tokenizer):
    restored = Tokenizer.from_state_dict(tiny_tokenizer.state_dict())
    text = ["The old horse pulls the red car ."]
    assert restored.src.encode(text) == tiny_tokenizer.src.encode(text)
    assert restored.tgt.keep == tiny_tokenizer.tgt.keep


def test_same_data_and_settings_reuse_the_cached_model(monkeypatch):
    import sentencepiece as spm

    texts = [f"sentence number {i} with words" for i in range(200)]
    cfg = TokenizerConfig(vocab_size=60)
    first = train_tokenizer(cfg, texts, texts)
    trainings = []
    real_train = spm.SentencePieceTrainer.train
    monkeypatch.setattr(spm.SentencePieceTrainer, "train",
                        lambda *args, **kwargs: trainings.append(1) or real_train(*args, **kwargs))
    again = train_tokenizer(cfg, texts, texts)
    assert trainings == [] and again.src.model_proto == first.src.model_proto  # read from the cache
    train_tokenizer(TokenizerConfig(vocab_size=61), texts, texts)
    assert trainings == [1]  # other settings: trained again, not read from the cache


TEXTS = [f"words and more words {i}" for i in range(100)]


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NMT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def model_with_other_special_ids() -> bytes:
    """A sound sentencepiece model, trained with sentencepiece's own ids (<unk> 0, no padding)."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(TEXTS), model_writer=model, vocab_size=40, minloglevel=2,
                                   hard_vocab_limit=False)
    return model.getvalue()


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_cached_model_is_named_set_aside_and_trained_again(own_cache, caplog, damage):
    good = train_tokenizer(TokenizerConfig(vocab_size=40), TEXTS, TEXTS)
    (cached,) = cache_dir().glob("*.model")
    bad = damage_file(cached, damage, wrong_types=model_with_other_special_ids())
    with caplog.at_level(logging.WARNING):
        again = train_tokenizer(TokenizerConfig(vocab_size=40), TEXTS, TEXTS)
    assert again.src.encode(TEXTS) == good.src.encode(TEXTS)  # the same text and settings: the same model
    assert len(caplog.records) == 1 and caplog.records[0].getMessage().startswith(f"{cached}: ")
    (aside,) = cache_dir().glob(cached.name + ".bad-*")
    assert aside.read_bytes() == bad
    assert cached.read_bytes() == good.src.model_proto  # replaced by a good one


def test_a_second_process_waits_for_the_model_the_first_is_training(own_cache):
    """Two preparations of one config at once: sentencepiece is trained once, the second reads its model."""
    cfg, started, release, results = TokenizerConfig(vocab_size=40), threading.Event(), threading.Event(), {}

    def first_corpus(path):
        started.set()
        release.wait(60)  # still training while the second one looks for the model
        path.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
        return len(TEXTS)

    def second_corpus(path):
        results["second trained"] = True
        path.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
        return len(TEXTS)

    first = threading.Thread(target=lambda: results.update(first=cached_model(cfg, "one key", first_corpus)))
    second = threading.Thread(target=lambda: results.update(second=cached_model(cfg, "one key", second_corpus)))
    first.start()
    assert started.wait(60)
    second.start()
    second.join(1.0)
    assert second.is_alive(), "the second did not wait for the first"
    release.set()
    first.join(60)
    second.join(60)
    assert "second trained" not in results and results["second"] == results["first"]


def test_a_model_cache_that_cannot_be_written_is_one_warning(tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "a file"
    blocker.write_text("")
    monkeypatch.setenv("NMT_CACHE", str(blocker / "cache"))  # a folder under a file: cannot be created
    with caplog.at_level(logging.WARNING):
        trained = train_tokenizer(TokenizerConfig(vocab_size=40), TEXTS, TEXTS)
    assert trained.src.decode(trained.src.encode(TEXTS[:1])[0]) == TEXTS[0]
    (warning,) = caplog.records
    assert warning.getMessage().startswith(f"{blocker / 'cache' / 'sentencepiece'}/")
    assert "cannot write it" in warning.getMessage()
