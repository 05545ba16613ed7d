"""The training launch scripts check their arguments before starting anything: one error line, exit 2."""
import subprocess

import pytest

from tests.train.tiny_training import ROOT

DISTRIBUTE = ROOT / "scripts" / "run_distribute_train.sh"
STANDALONE = ROOT / "scripts" / "run_standalone_train.sh"


@pytest.fixture
def inputs(tmp_path):
    config = tmp_path / "cfg.yaml"
    config.write_text("device_target: CPU\n")
    data = tmp_path / "pre"
    data.mkdir()
    (data / "plans.json").write_text("{}")
    return config, data, tmp_path / "out"


def run(script, *args):
    return subprocess.run(["bash", str(script), *map(str, args)], capture_output=True, text=True, timeout=60)


def assert_refused(result, out, *words):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0]
    assert not out.exists(), "the script went on to create the output folder"


@pytest.mark.parametrize("case", ["config", "data", "plans", "workers_word", "workers_zero", "workers_negative",
                                  "rank_table", "output_file"])
def test_distribute_script_checks_its_arguments_before_msrun(inputs, tmp_path, case):
    config, data, out = inputs
    workers, extra, expected = "2", [], []
    if case == "config":
        config, expected = tmp_path / "missing.yaml", ["config file not found", "missing.yaml"]
    elif case == "data":
        data, expected = tmp_path / "nowhere", ["data folder not found", "nowhere"]
    elif case == "plans":
        (data / "plans.json").unlink()
        expected = ["no plans.json"]
    elif case.startswith("workers"):
        workers = {"workers_word": "two", "workers_zero": "0", "workers_negative": "-1"}[case]
        expected = ["WORKERS must be a positive integer", workers]
    elif case == "rank_table":
        extra, expected = [tmp_path / "rank_table.json"], ["rank table file not found"]
    elif case == "output_file":
        out.write_text("a file")
        result = run(DISTRIBUTE, config, data, out, workers)
        assert result.returncode == 2 and result.stderr.startswith("error: output folder")
        assert out.read_text() == "a file"
        return
    assert_refused(run(DISTRIBUTE, config, data, out, workers, *extra), out, *expected)


@pytest.mark.parametrize("case", ["config", "data", "plans"])
def test_standalone_script_checks_its_arguments(inputs, tmp_path, case):
    config, data, out = inputs
    if case == "config":
        config = tmp_path / "missing.yaml"
    elif case == "data":
        data = tmp_path / "nowhere"
    else:
        (data / "plans.json").unlink()
    assert_refused(run(STANDALONE, config, data, out), out)


def test_too_few_arguments_print_the_usage(inputs):
    config, data, out = inputs
    result = run(DISTRIBUTE, config, data, out)
    assert result.returncode == 2 and result.stderr.startswith("usage:")
