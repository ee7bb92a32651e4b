"""The training loop's decisions (`TrainPlan`), one row per case: settings and the run's counters in; validate or
stop, and why, out. Rows whose id starts with "fix:" decided otherwise in the loop before (nmt/train.py before
issue 37); the loop tests that fail on that code are named in the row."""

import pytest

from nmt.checkpoint import Progress
from nmt.config import TrainConfig
from nmt.train_plan import TrainPlan

# id: (settings, where, counters, seconds the last validation took) -> (validate, why begins with)
VALIDATION = {
    "no valid_every: not due": ({}, "step", dict(step=10), None, False, "not due"),
    "valid_every=5 at step 10": ({"valid_every": 5}, "step", dict(step=10), None, True, "train.valid_every=5"),
    "valid_every=5 at step 11": ({"valid_every": 5}, "step", dict(step=11), None, False, "not due"),
    "never at step 0": ({"valid_every": 5}, "step", dict(step=0), None, False, "not due"),
    "a run resumed at a validated step": ({"valid_every": 5}, "step", dict(step=10, validated_step=10), 2.0, False,
                                          "validated at this step already"),
    "a validation a signal abandoned, on resume": ({"valid_every": 5}, "step", dict(step=10, validated_step=5), None,
                                                   True, "train.valid_every=5"),
    "the budget's last step, when due": ({"valid_every": 5, "max_steps": 10}, "step", dict(step=10, elapsed=9.0),
                                         2.0, True, "train.valid_every=5"),
    "epoch end": ({}, "epoch_end", dict(step=25, elapsed=25.0), 2.0, True, "the epoch's end"),
    "epoch end at a step valid_every validated": ({"valid_every": 5}, "epoch_end",
                                                  dict(step=25, validated_step=25), 2.0, False,
                                                  "validated at this step already"),
    "epoch end, steps left for longer than a validation": ({"max_steps": 30}, "epoch_end",
                                                           dict(step=20, elapsed=20.0), 3.0, True, "the epoch's end"),
    "epoch end, steps left for exactly a validation": ({"max_steps": 23}, "epoch_end", dict(step=20, elapsed=20.0),
                                                       3.0, True, "the epoch's end"),
    "epoch end, steps left for less than a validation": ({"max_steps": 21}, "epoch_end",
                                                         dict(step=20, elapsed=20.0), 3.0, False,
                                                         "epoch 1's validation left to the final one: the budget "
                                                         "ends in 1 s, a validation takes 3 s"),
    "epoch end, minutes left for less than a validation": ({"max_minutes": 1}, "epoch_end",
                                                           dict(step=20, epoch=2, elapsed=58.0), 3.0, False,
                                                           "epoch 2's validation left to the final one: the budget "
                                                           "ends in 2 s"),
    "epoch end, near the budget but no validation timed yet": ({"max_steps": 21}, "epoch_end",
                                                               dict(step=20, elapsed=20.0), None, True,
                                                               "the epoch's end"),
    # test_train.py::test_an_epoch_end_leaves_its_validation_to_the_final_one_only_before_the_budget_ends[20]
    "fix: epoch end where max_steps ends the run": ({"max_steps": 20}, "epoch_end", dict(step=20, elapsed=20.0), 3.0,
                                                    True, "the epoch's end, where the run ends"),
    "fix: epoch end where max_minutes ends the run": ({"max_minutes": 1}, "epoch_end", dict(step=20, elapsed=61.0),
                                                      3.0, True, "the epoch's end, where the run ends"),
    "fix: the last epoch's end, near the budget": ({"max_epochs": 2, "max_steps": 50}, "epoch_end",
                                                   dict(step=40, epoch=2, elapsed=40.0), 20.0, True,
                                                   "the epoch's end, where the run ends"),
    "the run's end": ({}, "end", dict(step=33, validated_step=25), 2.0, True, "the run's end"),
    "the run's end at a validated step": ({"max_steps": 30, "valid_every": 10}, "end",
                                          dict(step=30, validated_step=30), 2.0, False,
                                          "validated at this step already"),
}


@pytest.mark.parametrize("settings, at, counters, seconds, validate, why", VALIDATION.values(), ids=VALIDATION)
def test_when_to_validate(settings, at, counters, seconds, validate, why):
    decision = TrainPlan(TrainConfig(**settings)).validation(at, Progress(**counters), seconds)
    assert decision.validate is validate
    assert decision.why.startswith(why)
    assert decision.logged is ("left to the final one" in why)


# id: (settings, counters) -> why the run stops (None: it goes on)
STOP = {
    "no limit reached": ({}, dict(step=10, elapsed=100.0), None),
    "max_steps reached": ({"max_steps": 10}, dict(step=10), "train.max_steps=10 reached"),
    "a step before max_steps": ({"max_steps": 10}, dict(step=9), None),
    "max_minutes reached": ({"max_minutes": 1}, dict(step=3, elapsed=60.0), "train.max_minutes=1 reached"),
    "just before max_minutes": ({"max_minutes": 1}, dict(step=3, elapsed=59.9), None),
    "max_steps before max_minutes": ({"max_steps": 3, "max_minutes": 1}, dict(step=3, elapsed=60.0),
                                     "train.max_steps=3 reached"),
    "max_epochs done": ({"max_epochs": 2}, dict(epoch=3), "train.max_epochs=2 reached"),
    "in the last epoch": ({"max_epochs": 2}, dict(epoch=2), None),
    "the budget before max_epochs": ({"max_epochs": 2, "max_steps": 50}, dict(step=50, epoch=3),
                                     "train.max_steps=50 reached"),
    "patience=2 after 2 validations without a better BLEU": ({"patience": 2}, dict(validations_without_improvement=2),
                                                             "early stopping: train.patience=2 validations"),
    "patience=2 after 1": ({"patience": 2}, dict(validations_without_improvement=1), None),
    "no patience": ({"patience": None}, dict(validations_without_improvement=100), None),
    # the loop asked only after a validation: a resumed run trained on to its next one (test_train.py::
    # test_validation_cadence_patience_pair_limit_and_per_side_tokenizers resumes one)
    "fix: a run resumed after early stopping": ({"patience": 2}, dict(step=15, validated_step=15,
                                                                      validations_without_improvement=2),
                                                "early stopping"),
    # before, at an epoch's end the budget spent in its last step came first, and after a step patience did
    "fix: patience and the budget at once": ({"patience": 2, "max_steps": 20},
                                             dict(step=20, validations_without_improvement=2), "early stopping"),
}


@pytest.mark.parametrize("settings, counters, why", STOP.values(), ids=STOP)
def test_when_to_stop(settings, counters, why):
    stop = TrainPlan(TrainConfig(**settings)).stop(Progress(**counters))
    assert stop is None if why is None else stop.startswith(why)


@pytest.mark.parametrize("every, elapsed, due", [(10, 600.0, True), (10, 599.0, False), (None, 10**6, False)])
def test_when_to_save_last_pt(every, elapsed, due):
    """`save_every_minutes` counts from the last save (at 100 s here)."""
    plan = TrainPlan(TrainConfig(save_every_minutes=every))
    assert plan.save_due(Progress(elapsed=100.0 + elapsed), saved_at=100.0) is due
