import math

import pytest

from src.train.schedule import poly_lr, poly_schedule


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
