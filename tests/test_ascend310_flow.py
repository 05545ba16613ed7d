import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from src.data.preprocessed_case import load_case
from src.infer.export import export_network
from src.infer.offline import stitched_logits
from src.infer.predictor import load_predictor
from tests.infer.tiny_model import make_tiny_dataset, tiny_config, write_tiny_checkpoint
from tests.helpers import load_script

ROOT = Path(__file__).resolve().parents[1]


def test_three_steps_match_eval(tmp_path, capsys, restore_mode):
    raw, pre, plan = make_tiny_dataset(tmp_path / "data")
    ckpt = write_tiny_checkpoint(tmp_path / "fold_0" / "checkpoint_best.ckpt", seed=7, plan=plan,
                                 cfg=tiny_config(base_features=4, max_features=8))
    mindir, _ = export_network(tiny_config(), ckpt, tmp_path / "tiny", "MINDIR", batch_size=1)
    config = tmp_path / "cfg.yaml"
    config.write_text("device_target: CPU\namp_level: O0\ntta_mirror: true\nsw_batch_size: 2\npostprocess: lcc\n")
    common = ["--config", str(config), "--data", str(pre), "--fold", "0"]

    load_script("eval.py").main(common + ["--mindir", str(mindir), "--output", str(tmp_path / "ev_online")])
    bins = tmp_path / "bins"
    load_script("preprocess.py").main(common + ["--output", str(bins)])  # --output_path: below
    info = json.loads((bins / "windows.json").read_text())
    assert len(info["flips"]) == 8 and info["input_shape"] == [1, 1, 8, 16, 16]
    files = sorted((bins / "00_data").glob("*.bin"))
    assert len(files) == info["total_inputs"] == sum(c["inputs"] for c in info["cases"].values())
    assert files[0].stat().st_size == 4 * 8 * 16 * 16

    results = tmp_path / "results"
    load_script("ascend310_infer/mindir_runner.py").main(["--mindir", str(mindir), "--input", str(bins / "00_data"),
                                                           "--output", str(results)])
    assert len(list(results.glob("*_0.bin"))) == len(files)
    load_script("postprocess.py").main(common + ["--pre_path", str(bins), "--result_path", str(results),
                                                 "--output", str(tmp_path / "ev_offline")])
    capsys.readouterr()

    online = json.loads((tmp_path / "ev_online" / "summary.json").read_text())
    offline = json.loads((tmp_path / "ev_offline" / "summary.json").read_text())
    assert offline == pytest.approx(online)
    for case_id in ("case_00000", "case_00003"):
        a = np.asanyarray(nib.load(tmp_path / "ev_online" / "predictions" / f"{case_id}.nii.gz").dataobj)
        b = np.asanyarray(nib.load(tmp_path / "ev_offline" / "predictions" / f"{case_id}.nii.gz").dataobj)
        np.testing.assert_array_equal(a, b)

    predictor = load_predictor(tiny_config(tta_mirror=True), mindir=mindir, progress=False)
    data = load_case(pre, "case_00003").data
    direct = predictor.predict_logits(predictor.net_fns[0], data)
    np.testing.assert_allclose(stitched_logits(info, "case_00003", results), direct, rtol=1e-5, atol=1e-5)

    # a missing result is one clear error line
    next(results.glob("case_00003_*_0.bin")).unlink()
    with pytest.raises(SystemExit) as exit_info:
        load_script("postprocess.py").main(common + ["--pre_path", str(bins), "--result_path", str(results),
                                                     "--output", str(tmp_path / "ev_broken")])
    assert exit_info.value.code == 2 and "is missing" in capsys.readouterr().err
    # step 1 refuses to mix with old inputs (the older spelling of --output)
    with pytest.raises(SystemExit):
        load_script("preprocess.py").main(common + ["--output_path", str(bins)])
    assert "already holds" in capsys.readouterr().err


def test_runner_needs_batch_one_and_matching_inputs(tmp_path, capsys, restore_mode):
    ckpt = write_tiny_checkpoint(tmp_path / "m.ckpt")
    mindir, _ = export_network(tiny_config(), ckpt, tmp_path / "b2", "MINDIR", batch_size=2)
    inputs = tmp_path / "in"
    inputs.mkdir()
    np.zeros((1, 1, 8, 16, 16), np.float32).tofile(inputs / "x_0.bin")
    runner = load_script("ascend310_infer/mindir_runner.py")
    with pytest.raises(SystemExit):
        runner.main(["--mindir", str(mindir), "--input", str(inputs), "--output", str(tmp_path / "out")])
    assert "--batch_size 1" in capsys.readouterr().err
    mindir, _ = export_network(tiny_config(), ckpt, tmp_path / "b1", "MINDIR", batch_size=1)
    np.zeros(10, np.float32).tofile(inputs / "y_0.bin")
    with pytest.raises(SystemExit):
        runner.main(["--mindir", str(mindir), "--input", str(inputs), "--output", str(tmp_path / "out")])
    assert "y_0.bin holds 10 float32 values" in capsys.readouterr().err
