"""The first pass's held-out check (src/infer/locate_check.py) with a numpy first pass that finds bright voxels,
and what ``locate: auto`` does with its verdict (src/infer/locate_model.py)."""
import numpy as np
import pytest

from src.infer import locate_model
from src.infer.locate import LocateSettings, Locator
from src.infer.locate_check import check_case, check_locator, check_summary, check_verdict, settings_json
from src.infer.sliding_window import window_layout
from tests.infer.tiny_model import tiny_config

SHAPE = (16, 32, 32)
PATCH = (8, 16, 16)
SPACING = (1.0, 1.0, 1.0)


def bright_finder(windows: np.ndarray) -> np.ndarray:
    """Coarse logits: foreground exactly where the (block-averaged) intensity is above 0.5."""
    x = windows[:, 0]
    return np.stack([np.zeros_like(x), 40.0 * (x - 0.5)], axis=1).astype(np.float32)


def locator(margin_mm=2.0):
    return Locator(bright_finder, (8, 8, 8), (2, 2, 2), LocateSettings(mode="crop", margin_mm=margin_mm))


def kidney_case(island=False):
    """A bright labelled block the first pass finds; ``island``: also a dark labelled block far away, which
    it cannot find (a kidney part that looks like nothing it learned)."""
    data = np.zeros((1, *SHAPE), np.float32)
    seg = np.zeros(SHAPE, np.int16)
    data[0, 4:8, 4:12, 4:12] = 1.0
    seg[4:8, 4:12, 4:12] = 1
    seg[:, :, 0] = -1  # ignored voxels are not labelled foreground
    if island:
        seg[12:14, 26:30, 26:30] = 2
    return data, seg


def test_a_found_case_is_covered_and_crop_runs_fewer_windows():
    data, seg = kidney_case()
    result = check_case(locator(), data, seg, SPACING, PATCH, 0.5)
    assert result["covered"] == 1.0 and result["missed_voxels"] == 0
    run, total = result["windows"]
    assert total == len(window_layout(SHAPE, PATCH, 0.5).starts) and run < total


def test_a_missed_island_is_counted_voxel_for_voxel():
    data, seg = kidney_case(island=True)
    result = check_case(locator(), data, seg, SPACING, PATCH, 0.5)
    assert result["missed_voxels"] == 2 * 4 * 4
    assert result["covered"] == pytest.approx(256 / (256 + 32))


def test_a_fallback_holds_everything():
    data, seg = kidney_case(island=True)
    data[:] = 0.0  # nothing bright: the first pass finds nothing and the whole volume is predicted
    result = check_case(locator(), data, seg, SPACING, PATCH, 0.5)
    assert "found nothing" in result["whole_volume"] and "covered" not in result
    assert result["windows"][0] == result["windows"][1]


def test_the_check_names_the_worst_case_and_sums_the_windows():
    cases = [("case_a", *kidney_case()), ("case_b", *kidney_case(island=True))]
    check = check_locator(locator(), cases, SPACING, PATCH, 0.5)
    assert check["cases"] == 2 and check["worst_case"] == "case_b" and check["whole_volume"] == 0
    assert check["min_covered"] == check["per_case"]["case_b"]["covered"] < 1.0
    assert check["windows"] == [sum(check["per_case"][c]["windows"][i] for c in ("case_a", "case_b")) for i in (0, 1)]
    assert check["settings"] == settings_json(locator().settings)
    assert "case_b" in check_summary(check) and "88.89%" in check_summary(check)


def test_the_verdict():
    good = check_locator(locator(), [("case_a", *kidney_case())], SPACING, PATCH, 0.5)
    bad = check_locator(locator(), [("case_b", *kidney_case(island=True))], SPACING, PATCH, 0.5)
    settings = locator().settings
    assert check_verdict(good, settings, 1.0) is None
    assert check_verdict(good, LocateSettings(mode="crop", margin_mm=5.0), 1.0) is None  # a wider margin holds more
    assert "other locate settings" in check_verdict(good, LocateSettings(mode="crop", margin_mm=1.0), 1.0)
    assert "other locate settings" in check_verdict(good, LocateSettings(mode="crop", margin_mm=2.0,
                                                                         threshold=0.6), 1.0)
    assert "case_b" in check_verdict(bad, settings, 1.0)
    assert check_verdict(bad, settings, 0.8) is None
    assert "no held-out check" in check_verdict(None, settings, 1.0)
    assert "unreadable" in check_verdict({"cases": 1, "settings": "?"}, settings, 1.0)
    empty = check_locator(locator(), [], SPACING, PATCH, 0.5)
    assert "no validation cases" in check_verdict(empty, settings, 1.0) and "no validation" in check_summary(empty)


@pytest.mark.parametrize("locate, passed, used, says", [
    ("auto", True, True, None),
    ("auto", False, False, "not used"),
    ("crop", False, True, "warning: --locate crop"),
    ("windows", True, True, None),
])
def test_auto_uses_only_a_first_pass_its_check_vouches_for(monkeypatch, capsys, locate, passed, used, says):
    cfg = tiny_config(locate=locate, locate_margin_mm=2.0)
    case = kidney_case() if passed else kidney_case(island=True)
    check = check_locator(locator(), [("case_a", *case)], SPACING, PATCH, 0.5)
    first_pass = object()
    monkeypatch.setattr(locate_model, "checkpoint_locator", lambda path, settings: (first_pass, check))

    class Predictor:
        locator = "unset"

    predictor = Predictor()
    locate_model.attach_locator(predictor, cfg, ckpts=["model.ckpt"])
    assert predictor.locator is (first_pass if used else None)
    err = capsys.readouterr().err
    assert (says in err) if says else err == ""
