"""Fault injection over every command: bad inputs and bad outputs, table-driven.

Each row runs one entry script in-process against a shared tiny workspace (raw cases, a preprocessed
folder, a checkpoint, a MindIR) after the row's own damage, and requires what the README's Reliability
section promises: exit status 2, an ``error:`` line naming the problem, no traceback, every file that
existed before unchanged, and no temporary left behind. The kills at every write are tested per stage
(tests/data, tests/train, tests/infer); this file is about what a user can hand over. The rows live in
tests/fault_rows, one module per entry script.
"""
import os
import sys
from pathlib import Path

import pytest

from tests.fault_rows import ROWS
from tests.fault_rows.files import copy_from
from tests.infer.tiny_model import tiny_config, write_tiny_checkpoint, write_tiny_kits19
from tests.helpers import execution_mode_kept, load_script, snapshot

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "device_target: CPU\namp_level: O0\ntta_mirror: false\npostprocess: none\nnum_workers: 1\n" \
         "epochs: 1\niters_per_epoch: 1\nval_iters: 1\nbatch_size: 2\nbase_features: 4\nmax_features: 8\n" \
         "max_stages: 2\ntarget_spacing: [3.0, 1.5, 1.5]\npatch_size: [8, 16, 16]\nnum_folds: 2\n"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A pristine tiny project: raw KiTS19 cases, their preprocessed folder, a checkpoint, a MindIR."""
    from src.data.preprocess import preprocess_dataset
    from src.infer.export import export_network

    root = tmp_path_factory.mktemp("workspace")
    write_tiny_kits19(root / "raw", num_cases=4)
    plan = preprocess_dataset(root / "raw", root / "pre", target_spacing=[3.0, 1.5, 1.5], patch_size=[8, 16, 16],
                              base_features=4, max_features=8, max_stages=2, num_folds=2, workers=1,
                              progress=False)
    (root / "cfg.yaml").write_text(CONFIG)
    ckpt = write_tiny_checkpoint(root / "model" / "fold_0" / "checkpoint_best.ckpt", plan=plan)
    with execution_mode_kept():
        export_network(tiny_config(), ckpt, root / "model" / "tiny", "MINDIR", batch_size=1)
    return root


@pytest.mark.parametrize("row", ROWS, ids=[row.__name__ for row in ROWS])
def test_bad_input_is_one_line_and_destroys_nothing(row, workspace, tmp_path, capsys, restore_mode, monkeypatch):
    script, argv, names = row(workspace, tmp_path)
    for module in getattr(row, "hidden_modules", ()):
        monkeypatch.setitem(sys.modules, module, None)  # ``import module`` raises ImportError
    before_ws, before_tmp = snapshot(workspace), snapshot(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        load_script(script).main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert errors, err
    assert names in errors[-1] or any(names in line for line in errors), err
    assert snapshot(workspace) == before_ws
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if k in before_tmp} == before_tmp, "an existing file was changed"
    assert not [name for name in after if ".tmp-" in name], "a temporary was left behind"


def test_row_count_matches_the_readme():
    """The README's Reliability section quotes how many bad inputs this table covers."""
    readme = (ROOT / "README.md").read_text()
    assert f"{len(ROWS)} bad inputs" in readme


def test_export_never_replaces_a_json_of_someone_else(workspace, tmp_path, capsys, restore_mode):
    pre = copy_from(workspace, "pre", tmp_path)
    before = (pre / "splits.json").read_bytes()
    load_script("export.py").main(["--config", str(workspace / "cfg.yaml"), "--ckpt",
                                   str(workspace / "model" / "fold_0" / "checkpoint_best.ckpt"),
                                   "--file_name", str(pre / "splits")])
    capsys.readouterr()
    assert (pre / "splits.json").read_bytes() == before
    assert (pre / "splits.mindir").is_file() and (pre / "splits.mindir.json").is_file()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_is_refused_before_the_model_loads(workspace, tmp_path, capsys, restore_mode):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o500)
    try:
        with pytest.raises(SystemExit) as exit_info:
            load_script("predict.py").main(["--config", str(workspace / "cfg.yaml"), "--ckpt",
                                            str(workspace / "model" / "fold_0" / "checkpoint_best.ckpt"),
                                            "--input", str(workspace / "raw"), "--output", str(out)])
        assert exit_info.value.code == 2 and "not writable" in capsys.readouterr().err
    finally:
        out.chmod(0o700)
