"""The locator travels with the model: train.py's locator training, stored in the checkpoint, loaded by the
predictor (src/train/locator_training.py, src/infer/locate_model.py)."""
import numpy as np
import pytest

from src.infer.locate import LocateSettings
from src.infer.locate_model import checkpoint_locator, settings_for
from src.train.locator_training import (attach_locator, check_network, locator_plan, sample_batch,
                                        train_locator_on)
from tests.infer.tiny_model import tiny_config, tiny_plan, write_tiny_checkpoint


def coarse_volumes(count=2, shape=(12, 16, 16)):
    rng = np.random.default_rng(0)
    volumes = []
    for _ in range(count):
        foreground = np.zeros(shape, np.int32)
        foreground[4:8, 6:10, 3:7] = 1
        data = (rng.normal(0, 0.3, size=(1, *shape)) + 2.0 * foreground).astype(np.float32)
        volumes.append((data, foreground))
    return volumes


def test_sample_batch_crops_pads_and_centres_on_foreground():
    data, target = sample_batch(coarse_volumes(1), (8, 8, 8), 4, np.random.default_rng(1))
    assert data.shape == (4, 1, 8, 8, 8) and target.shape == (4, 1, 8, 8, 8)
    assert target[1].sum() > 0 and target[3].sum() > 0  # every second sample holds foreground


@pytest.mark.slow
def test_trained_locator_is_stored_in_the_checkpoint_and_loaded_back(tmp_path, restore_mode):
    from src.runtime.device import setup_device

    setup_device("CPU", mode="graph")
    cfg = tiny_config(locator_iters=3, locator_patch_size=[8, 16, 16], locator_spacing_mm=3.0)
    ckpt = write_tiny_checkpoint(tmp_path / "checkpoint_best.ckpt")
    lplan = locator_plan(cfg, tiny_plan())
    assert lplan["factors"] == [1, 2, 2]
    network, stats = train_locator_on(cfg, lplan, coarse_volumes(), log=lambda _: None)
    assert stats["iters"] == 3 and np.isfinite(stats["last_loss"])
    attach_locator(ckpt, network, lplan)
    locator, check = checkpoint_locator(ckpt, settings_for(cfg.replace(locate="crop")))
    assert locator.factors == (1, 2, 2) and locator.settings.mode == "crop" and check is None
    windows = np.random.default_rng(2).normal(size=(1, 1, 8, 16, 16)).astype(np.float32)
    import mindspore as ms

    expected = network(ms.Tensor(windows)).asnumpy()
    np.testing.assert_allclose(locator.net_fn(windows), expected, rtol=1e-5, atol=1e-5)
    # the main network still loads from the same file, ignoring the locator's entries
    from src.infer.predictor import load_checkpoint_network

    load_checkpoint_network(ckpt, cfg, "CPU")


def test_locate_off_loads_nothing():
    assert settings_for(tiny_config(locate="off")) is None
    assert settings_for(tiny_config()) == LocateSettings(mode="crop")  # auto
    assert settings_for(tiny_config(locate="windows")) == LocateSettings(mode="windows")


@pytest.mark.slow
def test_the_locator_travels_with_a_mindir_export_and_predicts_as_the_checkpoint(tmp_path, restore_mode):
    from src.infer.export import export_network
    from src.infer.predictor import load_predictor, read_mindir_sidecar
    from src.runtime.device import setup_device

    setup_device("CPU", mode="graph")
    cfg = tiny_config(locator_iters=2, locator_patch_size=[8, 16, 16], locator_spacing_mm=3.0, locate="crop",
                      locate_threshold=0.5, locate_include=0.5, locate_max_unsure=1.0)
    ckpt = write_tiny_checkpoint(tmp_path / "fold_0" / "checkpoint_best.ckpt")
    lplan = locator_plan(cfg, tiny_plan())
    network, _ = train_locator_on(cfg, lplan, coarse_volumes(), log=lambda _: None)
    check = check_network(cfg, tiny_plan(), network, lplan, [])  # what a fold without validation cases stores
    attach_locator(ckpt, network, lplan, check)
    model, _ = export_network(cfg, ckpt, tmp_path / "export" / "tiny", "MINDIR")
    entry = read_mindir_sidecar(model)["locator"]
    assert entry["file"] == "tiny.locator.mindir" and (model.parent / entry["file"]).is_file()
    assert entry["check"] == check  # the held-out check travels with it
    volume = np.random.default_rng(3).normal(size=(1, 16, 32, 32)).astype(np.float32)
    from_ckpt = load_predictor(cfg, ckpts=[ckpt], progress=False)
    from_mindir = load_predictor(cfg, mindir=model, progress=False)
    assert from_ckpt.locator is not None and from_mindir.locator is not None
    np.testing.assert_allclose(from_mindir.locator.foreground(volume), from_ckpt.locator.foreground(volume),
                               rtol=1e-4, atol=1e-5)
    (model.parent / entry["file"]).write_bytes(b"changed")
    from src.errors import UserError

    with pytest.raises(UserError, match="locator file"):
        load_predictor(cfg, mindir=model, progress=False)
