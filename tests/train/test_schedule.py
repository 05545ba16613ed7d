import json
import math

import pytest

from src.train.schedule import BudgetChoice, epochs_within_budget, poly_lr, poly_schedule


def test_poly_lr_matches_nnunet_formula():
    assert poly_lr(0.01, 0, 1000) == pytest.approx(0.01)
    assert poly_lr(0.01, 500, 1000, 0.9) == pytest.approx(0.01 * 0.5 ** 0.9)
    assert poly_lr(0.01, 999, 1000, 0.9) == pytest.approx(0.01 * 0.001 ** 0.9)


def test_poly_lr_decreases_and_stays_non_negative_past_the_end():
    schedule = poly_schedule(0.01, 10)
    assert len(schedule) == 10
    assert all(a > b for a, b in zip(schedule, schedule[1:]))
    assert poly_lr(0.01, 10, 10) == 0.0
    assert poly_lr(0.01, 12, 10) == 0.0
    assert not math.isnan(poly_lr(0.01, 12, 10, 0.5))


def test_poly_lr_exponent_one_is_linear():
    assert poly_lr(1.0, 3, 4, 1.0) == pytest.approx(0.25)


@pytest.mark.parametrize("epoch,epochs", [(-1, 10), (0, 0)])
def test_poly_lr_rejects_bad_arguments(epoch, epochs):
    with pytest.raises(ValueError):
        poly_lr(0.01, epoch, epochs)


# ---------------------------------------------------------------- train_minutes: the epochs that fit

def test_first_epoch_rate_is_the_base_rate_whatever_the_total():
    # what makes choosing the epoch count at the end of epoch 0 exact: epoch 0 never depends on it
    assert {poly_lr(0.003, 0, total) for total in range(1, 500)} == {0.003}
    assert poly_lr(0.003, 1, 104) != poly_lr(0.003, 1, 120)


def test_epochs_that_fit_the_budget():
    choice = epochs_within_budget(9, 5.1, cap=120)
    assert choice.epochs == 105  # floor(540 / 5.1)
    assert not choice.budget_too_small
    # the time already spent (set-up, compilation, the first epoch) comes off the budget
    assert epochs_within_budget(9, 5.1, cap=120, spent_seconds=40.0, finished_epochs=1).epochs == 1 + 98
    # an exact fit counts
    assert epochs_within_budget(10, 6.0, cap=120).epochs == 100


def test_the_configured_epochs_cap_the_choice():
    assert epochs_within_budget(600, 5.0, cap=120, spent_seconds=30.0, finished_epochs=1).epochs == 120
    assert epochs_within_budget(600, 5.0, cap=7).epochs == 7


def test_a_budget_too_small_still_trains_one_epoch_and_warns():
    choice = epochs_within_budget(0.5, 20.0, cap=120, spent_seconds=45.0, finished_epochs=1)
    assert choice.epochs == 1 and choice.budget_too_small
    lines = choice.lines()
    assert len(lines) == 2 and lines[0].startswith("warning: train_minutes 0.5 is too small")
    assert "training stops after 1 epoch(s)" in lines[0]
    # nothing trained yet and no room for one epoch: still one
    assert epochs_within_budget(0.01, 20.0, cap=120).epochs == 1
    # never fewer than the epochs already trained
    assert epochs_within_budget(1, 20.0, cap=120, spent_seconds=300.0, finished_epochs=3).epochs == 3
    # one epoch that fits exactly is no warning
    assert not epochs_within_budget(1, 30.0, cap=120, spent_seconds=30.0, finished_epochs=1).budget_too_small


def test_the_choice_line_names_budget_measurement_and_schedule():
    choice = epochs_within_budget(9, 5.1, cap=120, spent_seconds=29.6, finished_epochs=1)
    (line,) = choice.lines()  # 1 + floor((540 - 29.6) / 5.1)
    assert line == ("train_minutes 9: epoch 5.1 s measured after compilation (30 s spent by the end of epoch 1), "
                    "101 of 120 epochs fit; the poly LR schedule runs over 101")


def test_the_choice_round_trips_through_json():
    choice = epochs_within_budget(2.5, 3.25, cap=40, spent_seconds=12.5, finished_epochs=1)
    assert BudgetChoice.from_json(json.loads(json.dumps(choice.to_json()))) == choice


@pytest.mark.parametrize("args", [
    dict(train_minutes=0, epoch_seconds=5.0, cap=10),
    dict(train_minutes=-1, epoch_seconds=5.0, cap=10),
    dict(train_minutes=9, epoch_seconds=0.0, cap=10),
    dict(train_minutes=9, epoch_seconds=5.0, cap=0),
    dict(train_minutes=9, epoch_seconds=5.0, cap=10, spent_seconds=-1.0),
])
def test_epochs_within_budget_rejects_bad_arguments(args):
    with pytest.raises(ValueError):
        epochs_within_budget(**args)
