"""The entry scripts' shared command line (src/cli.py): one spelling of the output flag with the older ones
as aliases, eval.py's subcommands with the forms without one still meaning what they meant, and argparse
requiring each subcommand's own flags."""
import filecmp

import pytest

from tests.helpers import load_script

SCRIPTS = ("train", "eval", "predict", "export", "prepare", "preprocess", "postprocess",
           "ascend310_infer/mindir_runner.py")

# (script, argv before the output flag, the older spelling of --output, argv after it)
OUTPUT_SPELLINGS = [
    ("prepare", ["synth", "--format", "kits19", "--cases", "1"], "--out", []),
    ("prepare", ["preprocess", "--raw", "raw", "--config", "c.yaml"], "--out", []),
    ("preprocess", ["--config", "c.yaml", "--data", "pre", "--fold", "0"], "--output_path", []),
    ("eval", ["--pred", "p", "--ref", "r", "--metric", "kits19"], "--out", []),
    ("eval", ["score", "--pred", "p", "--ref", "r", "--metric", "kits19"], "--out", []),
]


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_entry_script_prints_its_help(script, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_script(script).main(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    assert help_text.startswith("usage:") and load_script(script).__doc__.splitlines()[0] in help_text


@pytest.mark.parametrize("script, before, old_spelling, after", OUTPUT_SPELLINGS,
                         ids=[f"{row[0]}-{row[1][0]}-{row[2]}" for row in OUTPUT_SPELLINGS])
def test_output_and_its_older_spelling_parse_alike(script, before, old_spelling, after):
    parser = load_script(script).build_parser()
    canonical = parser.parse_args(before + ["--output", "target"] + after)
    older = parser.parse_args(before + [old_spelling, "target"] + after)
    assert canonical.output == older.output == "target"
    assert vars(canonical) == vars(older)


def test_prepare_synth_writes_the_same_cases_under_either_spelling(tmp_path):
    prepare = load_script("prepare")
    prepare.main(["synth", "--format", "kits19", "--cases", "1", "--output", str(tmp_path / "new")])
    prepare.main(["synth", "--format", "kits19", "--cases", "1", "--out", str(tmp_path / "old")])
    comparison = filecmp.dircmp(tmp_path / "new", tmp_path / "old")
    assert comparison.left_list == comparison.right_list and not comparison.diff_files
    assert not filecmp.dircmp(tmp_path / "new" / "case_00000", tmp_path / "old" / "case_00000").diff_files


@pytest.mark.parametrize("argv, command", [
    (["--config", "c.yaml", "--ckpt", "m.ckpt", "--data", "pre", "--fold", "0", "--output", "ev"], "model"),
    (["--pred", "p", "--ref", "r", "--metric", "kits19", "--out", "m.csv"], "score"),
    (["--ref", "r", "--pred=p", "--metric", "kits21", "--output", "m.csv"], "score"),
    (["model", "--config", "c.yaml", "--mindir", "m.mindir", "--data", "pre", "--fold", "0", "--output", "ev"],
     "model"),
    (["score", "--pred", "p", "--ref", "r", "--metric", "kits19", "--output", "m.csv"], "score"),
])
def test_eval_without_a_subcommand_means_what_it_always_meant(argv, command):
    args = load_script("eval").build_parser().parse_args(argv)
    assert args.command == command


@pytest.mark.parametrize("argv, named", [
    (["model", "--config", "c.yaml", "--data", "pre", "--fold", "0", "--output", "ev"], "--ckpt --mindir"),
    (["--config", "c.yaml", "--ckpt", "m.ckpt", "--fold", "0", "--output", "ev"], "--data"),
    (["--config", "c.yaml", "--ckpt", "m.ckpt", "--data", "pre", "--fold", "0"], "--output"),
    (["score", "--pred", "p", "--ref", "r", "--output", "m.csv"], "--metric"),
    (["--pred", "p", "--metric", "kits19", "--out", "m.csv"], "--ref"),
    (["--pred", "p", "--ref", "r", "--metric", "kits19"], "--output"),
    (["--pred", "p", "--ref", "r", "--metric", "kits19", "--out", "m.csv", "--ckpt", "m.ckpt"], "--ckpt"),
    (["score", "--pred", "p", "--ref", "r", "--metric", "kits19", "--out", "m.csv", "--merge_shards"],
     "--merge_shards"),
])
def test_each_eval_subcommand_requires_its_own_flags(argv, named, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_script("eval").main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and named in err.splitlines()[-1], err


def test_eval_score_refuses_to_run_as_an_msrun_worker(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("MS_ROLE", "MS_WORKER")
    monkeypatch.setenv("MS_WORKER_NUM", "2")
    monkeypatch.setenv("RANK_ID", "0")
    with pytest.raises(SystemExit) as exit_info:
        load_script("eval").main(["score", "--pred", str(tmp_path), "--ref", str(tmp_path), "--metric", "kits19",
                                  "--output", str(tmp_path / "m.csv")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("error: eval.py score (--pred) runs as one process")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("script", ["eval", "predict"])
def test_msrun_scheduler_steps_aside_before_parsing(script, monkeypatch):
    monkeypatch.setenv("MS_ROLE", "MS_SCHED")
    assert load_script(script).main(["--no-such-flag"]) is None
