"""Per-stage seconds of a predicted case (src/infer/stage_times.py)."""
import json
import time

from src.infer import stage_times


def test_stages_nest_sum_and_print_when_asked(monkeypatch, capsys):
    monkeypatch.setenv(stage_times.ENV, "1")
    with stage_times.case_record("case_1") as record:
        with stage_times.stage("network"):
            with stage_times.stage("windows"):
                time.sleep(0.02)
            stage_times.count("windows run", 3)
        with stage_times.stage("windows"):  # a second visit adds up
            time.sleep(0.01)
    assert record.seconds["windows"] >= 0.03 and record.seconds["network"] >= 0.02  # both visits add up
    assert record.parents == {"windows": "network", "network": None}
    assert record.counts == {"windows run": 3}
    assert record.exclusive() == {"windows": record.seconds["windows"],
                                  "network": max(record.seconds["network"] - record.seconds["windows"], 0.0)}
    err = capsys.readouterr().err
    parsed = stage_times.parse_lines("\rwindows: 90%|#########\r" + err)
    assert parsed[0]["case"] == "case_1" and set(parsed[0]["seconds"]) == {"network", "windows"}


def test_nothing_is_recorded_or_printed_outside_a_record(monkeypatch, capsys):
    monkeypatch.delenv(stage_times.ENV, raising=False)
    with stage_times.stage("read"):
        pass
    stage_times.count("windows run", 1)
    with stage_times.case_record("quiet"):
        pass
    assert capsys.readouterr().err == ""
    assert stage_times.parse_lines('stage seconds x: {"case": "x"}\nnot json: {') == [{"case": "x"}]
    assert json.dumps(stage_times.StageRecord("y").to_json())
