from pathlib import Path

import pytest

from nmt.config import Config, load_config
from nmt.errors import NMTError

ROOT = Path(__file__).resolve().parent.parent


def test_unknown_key_names_the_nearest_valid_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  max_grad_nrom: 5\n")
    with pytest.raises(NMTError, match=r"unknown key 'train.max_grad_nrom'; did you mean 'train.max_grad_norm'"):
        load_config(path)


def test_an_error_in_an_override_names_the_override_not_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 1.0\n")
    with pytest.raises(NMTError, match=r"^--set: unknown key 'train.lr_shedule'; did you mean 'train.lr_schedule'"):
        load_config(path, ["train.lr_shedule=budget"])
    with pytest.raises(NMTError, match=r"^--set: train.lr=-1.0: must be"):
        load_config(path, ["train.lr=-1"])
    path.write_text("train:\n  lr: -1.0\n")  # the file's own error is still the file's, beside a good override
    with pytest.raises(NMTError, match=f"^{path}: train.lr=-1.0: must be"):
        load_config(path, ["train.max_grad_norm=2"])


def test_unknown_section_is_rejected(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("trian:\n  lr: 1\n")
    with pytest.raises(NMTError, match="did you mean 'train'"):
        load_config(path)


def test_wrong_types_are_rejected():
    with pytest.raises(NMTError, match="train.max_epochs: expected an integer"):
        load_config(None, ["train.max_epochs=two"])
    with pytest.raises(NMTError, match="model.attention: 'luong' is not one of dot, general, concat"):
        load_config(None, ["model.attention=luong"])
    with pytest.raises(NMTError, match="expected true or false"):
        load_config(None, ["model.input_feed=3"])


def test_overrides_are_typed_and_nullable():
    cfg = load_config(None, ["train.lr=0.5", "train.max_grad_norm=null", "train.min_lr=1e-3", "data.src_lang=de"])
    assert cfg.train.lr == 0.5
    assert cfg.train.max_grad_norm is None
    assert cfg.train.min_lr == pytest.approx(1e-3)
    assert cfg.data.src_lang == "de"


def test_ints_are_accepted_where_floats_are_expected():
    assert load_config(None, ["train.lr=1"]).train.lr == 1.0


def test_yaml_files_read_as_a_user_means_them(tmp_path):
    """1e-3 is a number (YAML 1.1 reads it as text); an empty section takes --set keys; a key given twice
    is an error, not the last one silently; `no` for a language is a quoting mistake, said so."""
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  optimizer: adam\n  lr: 1e-3\n  min_lr: 1e-5\n")
    assert (load_config(path).train.lr, load_config(path).train.min_lr) == (1e-3, 1e-5)
    path.write_text("model:\ntrain:\n")
    assert load_config(path, ["train.lr=0.5"]).train.lr == 0.5
    path.write_text("data:\n  max_len: 5\ntrain:\n  lr: 0.5\ndata:\n  max_len: 50\n")
    with pytest.raises(NMTError, match=r"c.yaml:5: not valid YAML \('data' is given twice\)"):
        load_config(path)
    path.write_text("model:\n  <<: {layers: 1, dropout: 0.1}\n  dropout: 0.2\n")  # a merge: not a key twice
    assert (load_config(path).model.layers, load_config(path).model.dropout) == (1, 0.2)
    path.write_text("data:\n  tgt_lang: no\n")
    with pytest.raises(NMTError, match=r"data.tgt_lang: expected text, got false .*quote it, e.g. 'no'"):
        load_config(path)


def test_default_config_file_equals_the_packaged_defaults():
    """`nmt train` with no arguments uses the dataclass defaults; the YAML must say the same."""
    assert load_config(ROOT / "configs" / "multi30k_en_de.yaml") == Config()


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    load_config(path)


def test_default_training_method_is_sgd_lr1_clip5():
    cfg = Config()
    assert (cfg.train.optimizer, cfg.train.lr, cfg.train.max_grad_norm, cfg.train.loss_norm) == (
        "sgd", 1.0, 5.0, "sentences")
