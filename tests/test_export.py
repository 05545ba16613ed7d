import json
from pathlib import Path

import numpy as np
import pytest

from src.errors import UserError
from src.files import file_digest
from src.infer.export import export_network, export_target
from src.infer.predictor import load_predictor
from tests.infer.tiny_model import tiny_config, write_tiny_checkpoint
from tests.helpers import Killed, killed_at_commit, load_script

ROOT = Path(__file__).resolve().parents[1]


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
    assert json.loads((tmp_path / "b2.mindir.json").read_text())["input_shape"][0] == 2
    assert not (tmp_path / "b2.json").exists()
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
    (tmp_path / "broken.mindir.json").write_text(json.dumps({
        "producer": "export.py", "status": "complete", "plan": {}, "batch_size": 1, "input_shape": [1],
        "model_digest": file_digest(tmp_path / "broken.mindir")}))
    with pytest.raises(UserError, match="cannot load MindIR"):
        load_predictor(tiny_config(), mindir=tmp_path / "broken.mindir")


# ---------------------------------------------------------------- the sidecar: its name, its binding, what it replaces

def test_sidecar_is_named_after_the_model_and_bound_to_its_bytes(tmp_path, restore_mode):
    from src.infer.offline import run_mindir_on_bins
    from src.infer.mindir import read_mindir_sidecar

    ckpt = write_tiny_checkpoint(tmp_path / "fold_0" / "checkpoint_best.ckpt")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "net.json").write_text('{"a user": "file"}')
    model, sidecar = export_network(tiny_config(), ckpt, tmp_path / "out" / "net")
    assert sidecar == tmp_path / "out" / "net.mindir.json"
    assert (tmp_path / "out" / "net.json").read_text() == '{"a user": "file"}'
    info = read_mindir_sidecar(model)
    assert info["model_digest"] == file_digest(model) and info["checkpoint_digest"] == file_digest(ckpt)
    assert info["status"] == "complete" and info["model_file"] == "net.mindir"

    model.write_bytes(model.read_bytes() + b"\0")  # another model under the sidecar
    with pytest.raises(UserError, match="net.mindir is not the model net.mindir.json was written for"):
        load_predictor(tiny_config(), mindir=model)
    inputs = tmp_path / "bins"
    inputs.mkdir()
    np.zeros((1, 1, 8, 16, 16), np.float32).tofile(inputs / "x_0.bin")
    with pytest.raises(UserError, match="sha256"):  # the Ascend 310 flow's step 2 reads it the same way
        run_mindir_on_bins(model, inputs, tmp_path / "results", progress=False)
    sidecar.write_text(json.dumps({**info, "status": "incomplete"}))
    with pytest.raises(UserError, match="did not finish"):
        read_mindir_sidecar(model)


def test_export_replaces_only_its_own_finished_export_and_only_when_told(tmp_path, capsys, restore_mode,
                                                                          monkeypatch):
    ckpt = write_tiny_checkpoint(tmp_path / "model.ckpt", seed=1)
    other = write_tiny_checkpoint(tmp_path / "other.ckpt", seed=2)
    model, sidecar = export_network(tiny_config(), ckpt, tmp_path / "net")
    first = model.read_bytes(), sidecar.read_bytes()

    import src.infer.export as export_module
    real_load = export_module.load_checkpoint_network
    loads = []
    monkeypatch.setattr(export_module, "load_checkpoint_network", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    with pytest.raises(UserError, match="--overwrite"):
        export_network(tiny_config(), other, tmp_path / "net")
    assert (model.read_bytes(), sidecar.read_bytes()) == first and not loads
    export_network(tiny_config(), other, tmp_path / "net", overwrite=True)
    assert model.read_bytes() != first[0]
    assert json.loads(sidecar.read_text())["checkpoint_digest"] == file_digest(other)

    # files export.py did not write are never replaced, --overwrite or not
    (tmp_path / "foreign.mindir").write_bytes(b"someone's model")
    (tmp_path / "taken.mindir.json").write_text('{"not": "a sidecar"}')
    model.write_bytes(model.read_bytes() + b"\0")  # our sidecar, someone else's model under it
    loads.clear()
    for name, named in (("foreign", "foreign.mindir exists without the sidecar"),
                        ("taken", "taken.mindir.json exists and was not written by export.py"),
                        ("net", "net.mindir is not the model net.mindir.json was written for")):
        with pytest.raises(UserError, match=named):
            export_network(tiny_config(), ckpt, tmp_path / name, overwrite=True)
    assert (tmp_path / "foreign.mindir").read_bytes() == b"someone's model"
    assert (tmp_path / "taken.mindir.json").read_text() == '{"not": "a sidecar"}'
    assert not loads

    # the command: one error line, the folder unchanged
    config = tmp_path / "cfg.yaml"
    config.write_text("device_target: CPU\namp_level: O0\n")
    (tmp_path / "ok.mindir.json").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        load_script("export").main(["--config", str(config), "--ckpt", str(ckpt), "--file_name", str(tmp_path / "ok")])
    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "ok.mindir.json is a folder" in errors[0]
    assert not (tmp_path / "ok.mindir").exists() and not loads


def test_a_killed_export_is_refused_by_readers_and_redone_without_overwrite(tmp_path, restore_mode):
    from src.infer.mindir import read_mindir_sidecar

    ckpt = write_tiny_checkpoint(tmp_path / "model.ckpt", seed=1)
    other = write_tiny_checkpoint(tmp_path / "other.ckpt", seed=2)
    export_network(tiny_config(), ckpt, tmp_path / "old")
    kill_at = 1
    while True:
        target = tmp_path / f"net{kill_at}"
        export_network(tiny_config(), ckpt, target)  # a finished export the killed one replaces
        before = read_mindir_sidecar(target.with_suffix(".mindir"))
        try:
            with killed_at_commit(kill_at):
                export_network(tiny_config(), other, target, overwrite=True)
            finished = True
        except Killed:
            finished = False
        model = target.with_suffix(".mindir")
        assert not list(tmp_path.glob("*.tmp-*"))
        if finished:
            assert read_mindir_sidecar(model)["checkpoint_digest"] == file_digest(other)
            break
        try:  # killed: the old export intact, or one every reader refuses
            assert read_mindir_sidecar(model) == before
        except UserError as err:
            assert "did not finish" in str(err)
            export_network(tiny_config(), other, target)  # redone without --overwrite
            assert read_mindir_sidecar(model)["checkpoint_digest"] == file_digest(other)
        kill_at += 1
    assert kill_at == 4  # incomplete sidecar, model, complete sidecar
