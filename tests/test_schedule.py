"""Learning-rate schedules: the budget schedule's decay points, by hand, and in a real run."""

import math

import pytest

from nmt.config import TrainConfig, load_config
from nmt.errors import NMTError
from nmt.metrics_log import read_metrics
from nmt.schedule import budget_decay_points, budget_fraction, budget_lr, seconds_left
from tests.conftest import TINY_CONFIG, run_nmt


def test_default_budget_schedule_is_constant_for_half_then_halves_at_every_tenth():
    cfg = TrainConfig(lr_schedule="budget", lr=1.0)
    assert budget_decay_points(cfg) == pytest.approx([0.5, 0.6, 0.7, 0.8, 0.9])
    for fraction, lr in [(0.0, 1.0), (0.49, 1.0), (0.5, 0.5), (0.59, 0.5), (0.6, 0.25), (0.75, 0.125),
                         (0.85, 0.0625), (0.9, 0.03125), (1.0, 0.03125)]:
        assert budget_lr(cfg, fraction) == pytest.approx(lr), fraction


def test_budget_schedule_settings_and_floor():
    cfg = TrainConfig(lr_schedule="budget", lr=0.8, lr_decay=0.1, budget_decay_start=0.25, budget_decays=3,
                      min_lr=1e-3)
    assert budget_decay_points(cfg) == pytest.approx([0.25, 0.5, 0.75])
    assert [budget_lr(cfg, f) for f in (0.2, 0.3, 0.6, 0.9)] == pytest.approx([0.8, 0.08, 0.008, 1e-3])


def test_a_floor_above_the_starting_rate_never_raises_it():
    """Adam at 5e-5 under the default min_lr of 1e-4: every schedule keeps 5e-5, none doubles it."""
    cfg = TrainConfig(optimizer="adam", lr=5e-5, lr_schedule="budget")
    assert [budget_lr(cfg, f) for f in (0.0, 0.5, 0.95)] == [5e-5] * 3
    plateau = sgd_schedule(lr=5e-5, lr_schedule="plateau")
    for ppl in (10.0, 11.0):
        plateau.after_validation(ppl)
    assert plateau.lr == 5e-5


def test_the_budget_is_whichever_limit_ends_the_run_first():
    cfg = TrainConfig(max_epochs=10, max_steps=None, max_minutes=None)
    assert budget_fraction(cfg, step=500, elapsed_seconds=600, epochs_done=2.5) == pytest.approx(0.25)
    cfg = TrainConfig(max_epochs=10, max_steps=1000, max_minutes=20)
    assert budget_fraction(cfg, step=500, elapsed_seconds=300, epochs_done=1) == pytest.approx(0.5)  # steps
    assert budget_fraction(cfg, step=100, elapsed_seconds=900, epochs_done=1) == pytest.approx(0.75)  # minutes
    assert budget_fraction(cfg, step=100, elapsed_seconds=99999, epochs_done=1) == 1.0


def test_seconds_left_count_the_steps_left_at_the_runs_pace_and_the_minutes_left():
    assert seconds_left(TrainConfig(max_steps=None, max_minutes=None), step=5, elapsed_seconds=10) == math.inf
    assert seconds_left(TrainConfig(max_steps=None, max_minutes=20), step=5, elapsed_seconds=1000) == 200
    cfg = TrainConfig(max_steps=1000, max_minutes=20)
    assert seconds_left(cfg, step=900, elapsed_seconds=450) == pytest.approx(50)  # 100 steps at 0.5 s
    assert seconds_left(cfg, step=100, elapsed_seconds=1190) == pytest.approx(10)  # the minutes end first
    assert seconds_left(cfg, step=0, elapsed_seconds=0) == 1200  # no pace yet: the minutes alone


@pytest.mark.parametrize("key, value", [("budget_decay_start", "1.0"), ("budget_decay_start", "-0.1"),
                                        ("budget_decays", "0")])
def test_budget_settings_out_of_range_are_refused(key, value):
    with pytest.raises(NMTError, match=f"train.{key}"):
        load_config(TINY_CONFIG, [f"train.{key}={value}"])


def test_a_run_limited_by_steps_decays_at_the_budget_fractions(tmp_path):
    run_dir = tmp_path / "run"
    result = run_nmt("train", "--config", str(TINY_CONFIG), "--run-dir", str(run_dir),
                     "--set", "train.lr_schedule=budget", "--set", "train.max_steps=20", "--set", "train.log_every=1",
                     "--set", "data.test_split=null")
    assert result.returncode == 0, result.stderr
    lrs = {r["step"]: r["lr"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r and "event" not in r}
    assert sorted(lrs) == list(range(1, 21))
    # update s is taken with (s - 1) / 20 of the budget spent
    expected = {s: 0.5 ** sum((s - 1) / 20 >= p for p in (0.5, 0.6, 0.7, 0.8, 0.9)) for s in range(1, 21)}
    assert lrs == pytest.approx(expected)
    assert lrs[10] == 1.0 and lrs[11] == 0.5 and lrs[20] == 0.5 ** 5
    assert "lr 1 -> 0.5 (50% of the training budget spent)" in result.stderr


def sgd_schedule(**settings):
    import torch

    from nmt.schedule import LRSchedule

    cfg = TrainConfig(**{"lr": 1.0, **settings})
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    return LRSchedule(cfg, optimizer)


def test_plateau_halves_only_when_validation_perplexity_fails_to_improve():
    schedule = sgd_schedule(lr_schedule="plateau", lr_decay=0.5)
    lrs = []
    for ppl in [50.0, 40.0, 40.0, 30.0, 35.0, 31.0, 29.0]:
        schedule.after_validation(ppl)
        lrs.append(schedule.lr)
    # 40 does not beat 40; 35 and 31 do not beat 30; 29 does
    assert lrs == [1.0, 1.0, 0.5, 0.5, 0.25, 0.125, 0.125]
    schedule.after_epoch(10)  # epochs mean nothing to the plateau schedule
    assert schedule.lr == 0.125


def test_no_schedule_goes_below_min_lr():
    schedule = sgd_schedule(lr_schedule="plateau", lr_decay=0.1, min_lr=0.05)
    for ppl in [10.0, 11.0, 12.0, 13.0]:
        schedule.after_validation(ppl)
    assert schedule.lr == pytest.approx(0.05)
    epochs = sgd_schedule(lr_schedule="epoch", lr_decay=0.5, decay_start_epoch=3, min_lr=0.2)
    for epoch in range(1, 8):
        epochs.after_epoch(epoch)
    assert epochs.lr == pytest.approx(0.2)  # 1 -> 0.5 (3) -> 0.25 (4) -> 0.2 floor


def test_epoch_schedule_decays_from_its_start_epoch_and_none_never():
    schedule = sgd_schedule(lr_schedule="epoch", lr_decay=0.5, decay_start_epoch=3)
    lrs = []
    for epoch in range(1, 6):
        schedule.after_epoch(epoch)
        lrs.append(schedule.lr)
    assert lrs == [1.0, 1.0, 0.5, 0.25, 0.125]
    constant = sgd_schedule(lr_schedule="none")
    for epoch in range(1, 6):
        constant.after_epoch(epoch)
        constant.after_validation(100.0 + epoch)
        constant.follow_budget(0.99)
    assert constant.lr == 1.0


def test_plateau_state_survives_a_resume():
    schedule = sgd_schedule(lr_schedule="plateau")
    schedule.after_validation(20.0)
    resumed = sgd_schedule(lr_schedule="plateau")
    resumed.load_state_dict(schedule.state_dict())
    resumed.after_validation(25.0)
    assert resumed.lr == 0.5
