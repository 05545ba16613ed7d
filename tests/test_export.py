import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from src.errors import UserError
from src.infer.export import export_network, export_target
from src.infer.predictor import load_predictor
from tests.infer.tiny_model import restore_mode, tiny_config, write_tiny_checkpoint  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]


def load_script(name):
    spec = importlib.util.spec_from_file_location(f"script_{name}", ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_export_target_suffix():
    assert export_target("out/model", "MINDIR") == Path("out/model.mindir")
    assert export_target("model.mindir", "MINDIR") == Path("model.mindir")
    assert export_target("model", "AIR") == Path("model.air")


def test_mindir_predicts_like_the_checkpoint(tmp_path, restore_mode):
    ckpt = write_tiny_checkpoint(tmp_path / "fold_0" / "checkpoint_best.ckpt", seed=3)
    cfg = tiny_config(tta_mirror=True, sw_batch_size=2)
    model, sidecar = export_network(cfg, ckpt, tmp_path / "export" / "tiny", "MINDIR", batch_size=1)
    assert model == tmp_path / "export" / "tiny.mindir" and model.is_file()
    info = json.loads(sidecar.read_text())
    assert info["input_shape"] == [1, 1, 8, 16, 16] and info["output_shape"] == [1, 3, 8, 16, 16]
    assert not list(model.parent.glob("*.tmp-*"))

    volume = np.random.default_rng(5).normal(size=(1, 11, 21, 19)).astype(np.float32)
    from_ckpt = load_predictor(cfg, ckpts=[ckpt], progress=False).predict_preprocessed(volume)
    from_mindir = load_predictor(cfg, mindir=model, progress=False).predict_preprocessed(volume)
    np.testing.assert_allclose(from_mindir, from_ckpt, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(from_mindir.argmax(0), from_ckpt.argmax(0))


def test_export_command_batch_size_and_errors(tmp_path, capsys, restore_mode):
    ckpt = write_tiny_checkpoint(tmp_path / "model.ckpt")
    config = tmp_path / "cfg.yaml"
    config.write_text("device_target: CPU\namp_level: O0\n")
    export = load_script("export")
    export.main(["--config", str(config), "--ckpt", str(ckpt), "--file_name", str(tmp_path / "b2"),
                 "--batch_size", "2"])
    assert json.loads((tmp_path / "b2.json").read_text())["input_shape"][0] == 2
    assert "b2.mindir" in capsys.readouterr().out

    with pytest.raises(SystemExit) as exit_info:
        export.main(["--config", str(config), "--ckpt", str(ckpt), "--file_name", str(tmp_path / "m"),
                     "--file_format", "AIR"])
    assert exit_info.value.code == 2
    assert "AIR export works only on Ascend" in capsys.readouterr().err
    assert not (tmp_path / "m.air").exists()
    with pytest.raises(UserError, match="not found"):
        export_network(tiny_config(), tmp_path / "missing.ckpt", tmp_path / "x")


def test_mindir_without_sidecar_is_a_user_error(tmp_path, restore_mode):
    ckpt = write_tiny_checkpoint(tmp_path / "model.ckpt")
    model, sidecar = export_network(tiny_config(), ckpt, tmp_path / "m", "MINDIR")
    sidecar.unlink()
    with pytest.raises(UserError, match="json"):
        load_predictor(tiny_config(), mindir=model)
    (tmp_path / "broken.mindir").write_bytes(b"not a model")
    (tmp_path / "broken.json").write_text(json.dumps({"plan": {}, "batch_size": 1, "input_shape": [1]}))
    with pytest.raises(UserError, match="cannot load MindIR"):
        load_predictor(tiny_config(), mindir=tmp_path / "broken.mindir")
