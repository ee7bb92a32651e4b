import json
import os

import pytest

from nmt.config import DataConfig
from nmt.data.filters import drop_empty, filter_by_length
from nmt.data.sources import Corpus, load_splits
from nmt.data.text import count_text_lines, read_line_chunks, read_text_lines
from nmt.errors import NMTError


def write_text_corpus(folder, split="train", src=("a b", "c"), tgt=("x y", "z")):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{split}.en").write_text("".join(s + "\n" for s in src), encoding="utf-8")
    (folder / f"{split}.de").write_text("".join(t + "\n" for t in tgt), encoding="utf-8")


def write_jsonl(folder, split, rows):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def test_plain_text_folder(tmp_path):
    write_text_corpus(tmp_path, "train")
    write_text_corpus(tmp_path, "dev", ("d",), ("w",))
    train, valid = load_splits(DataConfig(dataset=str(tmp_path)), ["train", "validation"])
    assert (train.src, train.tgt) == (["a b", "c"], ["x y", "z"])
    assert (valid.src, valid.tgt) == (["d"], ["w"])  # 'validation' found as 'dev'


def test_hub_layout_folder_flat_columns(tmp_path):
    write_jsonl(tmp_path, "train", [{"en": "Hello .", "de": "Hallo ."}, {"en": "Yes", "de": "Ja"}])
    write_jsonl(tmp_path, "validation", [{"en": "No", "de": "Nein"}])
    train, valid = load_splits(DataConfig(dataset=str(tmp_path)), ["train", "valid"])
    assert train.src == ["Hello .", "Yes"] and train.tgt == ["Hallo .", "Ja"]
    assert valid.tgt == ["Nein"]


def test_hub_layout_folder_translation_column(tmp_path):
    write_jsonl(tmp_path, "train", [{"translation": {"en": "cat", "ko": "고양이"}}])
    (train,) = load_splits(DataConfig(dataset=str(tmp_path), tgt_lang="ko"), ["train"])
    assert (train.src, train.tgt) == (["cat"], ["고양이"])


def test_hub_name_goes_through_load_dataset(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(name, config_name):
        calls.append((name, config_name))
        return datasets.DatasetDict({"train": datasets.Dataset.from_dict(
            {"translation": [{"de": "Haus", "en": "house"}]})})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    (train,) = load_splits(DataConfig(dataset="wmt/wmt14", dataset_config="de-en"), ["train"])
    assert calls == [("wmt/wmt14", "de-en")]
    assert (train.src, train.tgt) == (["house"], ["Haus"])


def test_missing_language_lists_the_languages(tmp_path):
    write_jsonl(tmp_path, "train", [{"en": "a", "fr": "b"}])
    with pytest.raises(NMTError, match="no language 'de'; its columns are en, fr"):
        load_splits(DataConfig(dataset=str(tmp_path)), ["train"])


def test_missing_split_lists_the_splits(tmp_path):
    write_text_corpus(tmp_path, "train")
    with pytest.raises(NMTError, match="no split 'test'; it has train"):
        load_splits(DataConfig(dataset=str(tmp_path)), ["test"])


def test_line_count_mismatch_names_both_files(tmp_path):
    write_text_corpus(tmp_path, "train", ("a", "b", "c"), ("x", "y"))
    with pytest.raises(NMTError, match=r"train.en has 3 lines but .*train.de has 2"):
        load_splits(DataConfig(dataset=str(tmp_path)), ["train"])


def test_invalid_utf8_names_file_and_line(tmp_path):
    path = tmp_path / "x.en"
    path.write_bytes(b"ok\nfine\nbad \xe9 byte\n")
    with pytest.raises(NMTError, match=r"x.en:3: invalid UTF-8"):
        read_text_lines(path)


def test_drop_empty_and_length_filters():
    corpus, dropped = drop_empty(Corpus(["a", " ", "b", "c"], ["x", "y", "", "z"], "t"))
    assert (corpus.src, corpus.tgt, dropped) == (["a", "c"], ["x", "z"], 2)
    keep, reasons = filter_by_length([1, 5, 2, 1, 3], [1, 1, 2, 11, 9], max_len=10, max_ratio=3.0)
    assert keep.nonzero()[0].tolist() == [0, 2, 4]  # 3 vs 9 is exactly the ratio bound: kept
    assert reasons["longer than data.max_len=10 pieces"] == 1
    assert reasons["length ratio above data.max_len_ratio=3.0"] == 1


@pytest.mark.parametrize("data", [b"", b"\n", b"a", b"a\r\nb", b"a\n\nb\n", "\u00fc\u2028x\n".encode() * 7])
def test_a_file_read_in_chunks_gives_the_lines_read_whole_gives(tmp_path, data):
    path = tmp_path / "lines.txt"
    path.write_bytes(data)
    whole = read_text_lines(path)
    assert count_text_lines(path) == len(whole)
    assert [line for chunk in read_line_chunks(path, 2) for line in chunk] == whole
    assert all(len(chunk) <= 2 for chunk in read_line_chunks(path, 2))


def test_counting_a_files_lines_finds_invalid_utf8_on_any_line(tmp_path, monkeypatch):
    path = tmp_path / "lines.txt"
    path.write_bytes("\u00fc ok\n".encode() * 5 + b"bad \xff\n" + b"ok\n")
    with pytest.raises(NMTError, match=r"lines.txt:6: invalid UTF-8 \(byte 0xff\)"):
        count_text_lines(path)
    path.write_bytes(b"ok\n" * 3 + b"last line without newline \xe2\x82")  # cut inside a character
    with pytest.raises(NMTError, match=r"lines.txt:4: invalid UTF-8"):
        count_text_lines(path)
    with pytest.raises(NMTError, match="is a folder; give a text file"):
        count_text_lines(tmp_path)


def test_an_unreachable_hub_is_offline_for_the_load_only(monkeypatch):
    """The hub clients go offline while the dataset loads (no half-minute of retries), and neither the process's
    environment nor their setting stays changed for what the process does next."""
    import datasets
    import huggingface_hub.constants

    from nmt.data import hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "_hub_reachable", lambda: False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    seen = []

    def fake_load_dataset(name, config_name):
        seen.append((huggingface_hub.constants.is_offline_mode(), datasets.config.HF_HUB_OFFLINE))
        return datasets.DatasetDict({"train": datasets.Dataset.from_dict({"en": ["house"], "de": ["Haus"]})})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    environment = dict(os.environ)
    (train,) = load_splits(DataConfig(dataset="bentrevett/multi30k"), ["train"])
    assert seen == [(True, True)] and (train.src, train.tgt) == (["house"], ["Haus"])
    assert dict(os.environ) == environment
    assert not huggingface_hub.constants.is_offline_mode() and not datasets.config.HF_HUB_OFFLINE
