import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.infer.tiny_model import tiny_config, write_tiny_checkpoint, write_tiny_kits19
from tests.helpers import load_script

ROOT = Path(__file__).resolve().parents[2]


def test_predict_folder_and_single_file(tmp_path, capsys, restore_mode):
    raw = tmp_path / "raw"
    write_tiny_kits19(raw, num_cases=2)
    config = tmp_path / "cfg.yaml"
    config.write_text("device_target: CPU\namp_level: O0\ntta_mirror: true\npostprocess: lcc\n")
    ckpt = write_tiny_checkpoint(tmp_path / "model.ckpt")
    predict = load_script("predict")
    predict.main(["--config", str(config), "--ckpt", str(ckpt), "--input", str(raw), "--output",
                  str(tmp_path / "out")])
    out = capsys.readouterr()
    assert "case_00000: kidney L" in out.out and "wrote 2 prediction(s)" in out.out
    assert "largest foreground component" in out.err
    for case_id in ("case_00000", "case_00001"):
        source = nib.load(raw / case_id / "imaging.nii.gz")
        written = nib.load(tmp_path / "out" / f"{case_id}.nii.gz")
        assert written.shape == source.shape and written.get_data_dtype() == np.uint8
        np.testing.assert_array_equal(written.affine, source.affine)
        report = json.loads((tmp_path / "out" / f"{case_id}_report.json").read_text())
        assert set(report["volumes_ml"]) == {"kidney", "tumor"}
        label = np.asanyarray(written.dataobj)
        total = sum(v["total"] for v in report["volumes_ml"].values())
        assert total == pytest.approx(np.count_nonzero(label) * np.prod(source.header.get_zooms()) / 1000)
        assert (tmp_path / "out" / f"{case_id}_overlay.png").stat().st_size > 1000

    single = tmp_path / "single"
    single.mkdir()
    shutil.copy(raw / "case_00001" / "imaging.nii.gz", single / "patient7.nii.gz")
    (single / "broken.nii.gz").write_bytes(b"not a nifti file")
    with pytest.raises(SystemExit) as exit_info:
        predict.main(["--config", str(config), "--ckpt", str(ckpt), "--input", str(single), "--output",
                      str(tmp_path / "out2")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "broken" in err and "1 of 2 case(s) failed" in err
    assert (tmp_path / "out2" / "patient7.nii.gz").is_file()
    assert not (tmp_path / "out2" / "broken.nii.gz").exists()

    predict.main(["--config", str(config), "--ckpt", str(ckpt), "--input", str(single / "patient7.nii.gz"),
                  "--output", str(tmp_path / "out3")])
    assert (tmp_path / "out3" / "patient7_report.json").is_file()


def test_mindir_carries_the_folds_postprocessing_decision(tmp_path, capsys, restore_mode):
    from src.infer.export import export_network
    from src.infer.postprocess import POSTPROCESSING_FILE, save_postprocessing

    ckpt = write_tiny_checkpoint(tmp_path / "fold_0" / "checkpoint_best.ckpt")
    save_postprocessing({"all_foreground": False, "per_class": [2]}, ckpt.parent / POSTPROCESSING_FILE,
                        models=[ckpt])
    model, sidecar = export_network(tiny_config(postprocess="auto"), ckpt, tmp_path / "export" / "tiny")
    assert json.loads(sidecar.read_text())["postprocessing"]["per_class"] == [2]
    raw = tmp_path / "raw"
    write_tiny_kits19(raw, num_cases=1)
    config = tmp_path / "cfg.yaml"
    config.write_text("device_target: CPU\namp_level: O0\npostprocess: auto\n")
    predict = load_script("predict")
    predict.main(["--config", str(config), "--mindir", str(model), "--input", str(raw), "--output",
                  str(tmp_path / "out")])
    assert "the decision exported with the model" in capsys.readouterr().err
    # without a decision next to the checkpoint the sidecar says so, and auto applies nothing
    (ckpt.parent / POSTPROCESSING_FILE).unlink()
    model, sidecar = export_network(tiny_config(postprocess="auto"), ckpt, tmp_path / "export" / "plain")
    assert json.loads(sidecar.read_text())["postprocessing"] is None
    predict.main(["--config", str(config), "--mindir", str(model), "--input", str(raw), "--output",
                  str(tmp_path / "out2")])
    assert "no postprocessing" in capsys.readouterr().err


def test_export_refuses_a_decision_of_other_weights_unless_told_postprocess_none(tmp_path, restore_mode,
                                                                                  monkeypatch):
    """What the refusal advises works: ``--postprocess none`` exports without the fold's decision."""
    from src.errors import UserError
    from src.infer import export
    from src.infer.postprocess import POSTPROCESSING_FILE, save_postprocessing

    ckpt = write_tiny_checkpoint(tmp_path / "fold_0" / "checkpoint_best.ckpt")
    other = write_tiny_checkpoint(tmp_path / "other" / "checkpoint_best.ckpt", seed=3)
    save_postprocessing({"all_foreground": True, "per_class": []}, ckpt.parent / POSTPROCESSING_FILE,
                        models=[other])
    loaded, real_load = [], export.load_checkpoint_network
    monkeypatch.setattr(export, "load_checkpoint_network", lambda *a, **k: loaded.append(1) or real_load(*a, **k))
    with pytest.raises(UserError, match="--postprocess none"):
        export.export_network(tiny_config(postprocess="auto"), ckpt, tmp_path / "export" / "refused")
    assert not loaded  # refused before the network loads
    _, sidecar = export.export_network(tiny_config(postprocess="none"), ckpt, tmp_path / "export" / "plain")
    assert loaded and json.loads(sidecar.read_text())["postprocessing"] is None
