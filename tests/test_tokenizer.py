
from nmt.config import TokenizerConfig
from nmt.tokenizer import BOS, EOS, PAD, UNK, Tokenizer, train_tokenizer


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


