import json

from nmt.cli import main
from tests.conftest import TINY_CONFIG


def test_clipping_study_runs_end_to_end_and_records_divergence(tmp_path, capsys):
    out = tmp_path / "study"
    code = main(["study", "clipping", "--config", str(TINY_CONFIG), "--minutes", "0.05", "--out", str(out),
                 "--only", "1", "5", "--add", "sgd:1e6:none", "--set", "train.threads=1",
                 "--set", "train.max_bad_steps=3"])
    assert code == 0
    rows = json.loads((out / "study.json").read_text())
    assert [r["setting"] for r in rows] == ["sgd lr 1.0, clip 5", "adam lr 1e-3, no clip", "sgd lr 1e6, no clip"]
    default, adam, blown = rows
    assert not default["diverged"] and default["valid_bleu"] is not None
    assert 0 < default["clipped_fraction"] <= 1 and adam["clipped_fraction"] == 0
    assert blown["diverged"] and blown["diverged_at_step"] >= 1 and blown["valid_bleu"] is None
    assert "| sgd lr 1e6, no clip |" in (out / "study.md").read_text()
    for name in ("loss.png", "grad_norm.png", "norm_vs_length.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"


def test_a_bad_budget_or_setting_is_refused_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "study"
    for args in (["--minutes", "0"], ["--minutes", "-1"], ["--minutes", "nan"], ["--add", "sgd:-1:5"]):
        code = main(["study", "clipping", "--config", str(TINY_CONFIG), "--out", str(out), *args])
        error = capsys.readouterr().err.strip()
        assert code == 1 and error.startswith("error: ") and len(error.splitlines()) == 1, error
        assert not out.exists()
    assert "error: setting 'sgd lr -1, clip 5': train.lr=-1.0: must be" in error  # named as the user gave it


def test_a_setting_that_logged_no_loss_still_gives_strict_json(tmp_path):
    """No first loss means no divergence bound: null, never Infinity, which JSON readers reject."""
    from nmt.study import Setting, summarize

    row = summarize(Setting("sgd lr 1.0, clip 5", "sgd", 1.0, 5.0), tmp_path, "failed before its first step")
    assert row["divergence_bound"] is None and row["steps"] == 0
    json.dumps(row, allow_nan=False)


def test_a_setting_that_fails_for_another_reason_stops_the_study_and_old_runs_are_refused(tmp_path, capsys):
    """Only divergence is a result; a missing dataset is a mistake, not a row of zeros. An interrupted
    study's runs would be summarised as the new one's: its folder is refused."""
    out = tmp_path / "study"
    code = main(["study", "clipping", "--config", str(TINY_CONFIG), "--minutes", "0.05", "--out", str(out),
                 "--only", "1", "--set", f"data.dataset={tmp_path / 'nowhere'}"])
    assert code == 1 and "nowhere" in capsys.readouterr().err
    assert not (out / "study.json").exists() and not (out / "study.md").exists()
    (out / "sgd_lr_1.0__clip_5").mkdir(parents=True, exist_ok=True)
    code = main(["study", "clipping", "--config", str(TINY_CONFIG), "--minutes", "0.05", "--out", str(out),
                 "--only", "1"])
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 1
    assert error == f"error: {out} holds runs of an earlier study (sgd_lr_1.0__clip_5); choose another --out"
