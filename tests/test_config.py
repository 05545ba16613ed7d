import argparse
from pathlib import Path

import pytest

from src.config import Config, add_config_arguments, config_from_args, load_config, save_config
from src.errors import UserError

CONFIG_DIR = Path(__file__).resolve().parents[1] / "config"


def _args(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    add_config_arguments(parser)
    return parser.parse_args(argv)


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    assert cfg.name == path.stem


def test_bdci_config_keeps_the_seed_values():
    cfg = load_config(CONFIG_DIR / "kits19_bdci.yaml")
    assert cfg.target_spacing == [3.22, 1.62, 1.62]
    assert cfg.patch_size == [80, 160, 160]
    assert cfg.ds_weights == [0.53, 0.27, 0.13, 0.07, 0.0]
    assert cfg.momentum == 0.9 and cfg.epochs == 600 and cfg.iters_per_epoch == 50


def test_cli_overrides_every_kind_of_key():
    cfg = config_from_args(_args(["--config", str(CONFIG_DIR / "demo.yaml"), "--epochs", "1",
                                  "--iters_per_epoch", "2", "--patch_size", "32", "64", "64",
                                  "--tta_mirror", "true", "--lr", "0.5", "--device_target", "CPU"]))
    assert cfg.epochs == 1 and cfg.iters_per_epoch == 2
    assert cfg.patch_size == [32, 64, 64]
    assert cfg.tta_mirror is True and cfg.lr == 0.5


def test_null_override_clears_an_optional_list():
    cfg = config_from_args(_args(["--config", str(CONFIG_DIR / "kits19_bdci.yaml"), "--target_spacing", "null"]))
    assert cfg.target_spacing is None


@pytest.mark.parametrize("text, message", [
    ("epochs: 10\nbogus_key: 1\n", "unknown config key"),
    ("epochs: ten\n", "expects an integer"),
    ("device_target: TPU\n", "must be one of"),
    ("patch_size: [32, 64]\n", "needs 3 values"),
    ("image_budget_voxels: 0\n", "image_budget_voxels"),
    ("train_minutes: 0\n", "'train_minutes' must be a positive number"),
    ("train_minutes: -2.5\n", "'train_minutes' must be a positive number"),
    ("train_minutes: .inf\n", "'train_minutes' must be a positive number"),
    ("train_minutes: soon\n", "expects a number"),
    ("deep_supervision: maybe\n", "true or false"),
    ("- just\n- a list\n", "mapping"),
    ("epochs: [1\n", "not valid yaml"),
])
def test_bad_configs_give_one_clear_error(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=message):
        load_config(path)


def test_missing_config_file(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_config(tmp_path / "absent.yaml")


def test_save_and_reload_round_trip(tmp_path):
    cfg = load_config(CONFIG_DIR / "demo.yaml").replace(epochs=3, patch_size=[16, 32, 32])
    save_config(cfg, tmp_path / "cfg.yaml")
    assert load_config(tmp_path / "cfg.yaml") == cfg


def test_replace_validates():
    with pytest.raises(UserError):
        Config().replace(batch_size=0)


def test_train_minutes_is_off_by_default_and_a_number_of_minutes_when_set(tmp_path):
    assert Config().train_minutes is None
    assert load_config(CONFIG_DIR / "kits19_bdci.yaml").train_minutes is None
    path = tmp_path / "budget.yaml"
    path.write_text("train_minutes: 9\n")
    assert load_config(path).train_minutes == 9.0
    assert load_config(path, {"train_minutes": "null"}).train_minutes is None
    # the demo's length is a budget of minutes; epochs only caps it
    demo = load_config(CONFIG_DIR / "demo.yaml")
    assert demo.train_minutes is not None and demo.train_minutes > 0


def test_micro_batch_size_defaults_to_auto_and_parses_from_the_command_line():
    assert Config().micro_batch_size == "auto"
    demo = str(CONFIG_DIR / "demo.yaml")
    assert config_from_args(_args(["--config", demo])).micro_batch_size == "auto"
    cfg = config_from_args(_args(["--config", demo, "--batch_size", "4", "--micro_batch_size", "2"]))
    assert cfg.batch_size == 4 and cfg.micro_batch_size == "2"
    assert load_config(CONFIG_DIR / "demo.yaml", {"micro_batch_size": 1.0}).micro_batch_size == "1"
    assert config_from_args(_args(["--config", demo, "--micro_batch_size", "auto"])).micro_batch_size == "auto"


@pytest.mark.parametrize("value", ["3", "0", "-1", "half", "1.5"])
def test_micro_batch_size_must_divide_the_batch(value):
    with pytest.raises(UserError) as err:
        config_from_args(_args(["--config", str(CONFIG_DIR / "demo.yaml"), "--micro_batch_size", value]))
    message = str(err.value)
    assert "\n" not in message
    assert message == (f"config key 'micro_batch_size' must be auto or a whole number dividing batch_size 2, "
                       f"got '{value}'")
