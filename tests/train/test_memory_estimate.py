"""The micro-batch choice of ``micro_batch_size: auto`` from faked memory figures, and the estimate's calibration."""
import pytest

from src.config import load_config
from src.data.plan import Plan
from src.errors import UserError
from src.data.planning import pool_and_conv_props, stage_features
from src.models import build_network
from src.models.layers import count_parameters
from src.train import memory_estimate
from src.train.memory_estimate import GB, choose_micro_batch_size, estimate
from tests.data.preprocessed_fixture import make_plan
from tests.train.tiny_training import ROOT, TINY_STRIDES, tiny_config


def _shipped(name: str, spacing, median_shape, num_classes: int):
    """A shipped config on CPU and the plan it gets at its patch (as plan_for_config derives it)."""
    cfg = load_config(ROOT / "config" / f"{name}.yaml", {"device_target": "CPU"})
    strides, kernels, patch, _ = pool_and_conv_props(spacing, cfg.patch_size, None)
    plan = make_plan(["a"], patch, strides)
    plan.update(conv_kernel_sizes=kernels, features=stage_features(len(strides)), num_classes=num_classes,
                median_shape=median_shape, target_spacing=spacing)
    return cfg, Plan(plan)


# the rehearsal's data (two 100-slice cases): resampled median shapes at each config's spacing
BDCI = ("kits19_bdci", [3.22, 1.62, 1.62], [126, 247, 247], 3)
KITS21 = ("kits21_nnunet", [2.788, 0.78125, 0.78125], [120, 512, 512], 4)
TRANSFER = ("kits21_transfer", [0.78125] * 3, [428, 512, 512], 4)
MOTS = ("mots_dodnet", [1.5, 0.8, 0.8], [272, 500, 500], 3)


# the rehearsal's measured peaks of the training process tree (GB) and the samples per forward they ran with
MEASURED = [(BDCI, 2, 15.15), (KITS21, 1, 11.13), (TRANSFER, 1, 20.51), (MOTS, 1, 21.61)]


@pytest.mark.parametrize("shipped, samples, peak_gb", MEASURED)
def test_calibration_reproduces_the_rehearsal_measurements(shipped, samples, peak_gb):
    assert estimate(*reversed(_shipped(*shipped))).bytes_for(samples) / GB == pytest.approx(peak_gb, abs=0.5)


def test_auto_on_the_rehearsal_machine_chooses_what_ran():
    # 23.5 GB available: BDCI whole, the 128^3 and DoDNet configs one sample at a time (DoDNet with the warning)
    choices = {shipped[0]: choose_micro_batch_size(*reversed(_shipped(*shipped)), "CPU", 23.5 * GB)
               for shipped, _, _ in MEASURED}
    assert choices["kits19_bdci"].micro_batch_size == 2
    assert choices["kits21_transfer"].micro_batch_size == 1 and "warning" not in choices["kits21_transfer"].line
    assert choices["mots_dodnet"].micro_batch_size == 1 and "warning" in choices["mots_dodnet"].line
    assert estimate(*reversed(_shipped(*BDCI))).parameters == pytest.approx(31e6, rel=0.02)


@pytest.mark.parametrize("network", ["plain_unet", "res_unet_aspp", "dodnet"])
def test_parameter_count_is_the_networks(network):
    extra = {"loss": "dodnet", "deep_supervision": False} if network == "dodnet" else {}
    cfg = tiny_config(network=network, **extra)
    plan = make_plan(["a"], (16, 16, 16), TINY_STRIDES)
    plan["features"] = [4, 8, 16]
    plan = Plan(plan)
    assert estimate(plan, cfg).parameters == count_parameters(build_network(cfg, plan))


def test_the_residual_networks_have_about_138_million_parameters():
    cfg, plan = _shipped(*TRANSFER)
    assert estimate(plan, cfg).parameters == pytest.approx(138e6, rel=0.02)


def test_whole_batch_when_it_fits():
    cfg, plan = _shipped(*BDCI)
    need = estimate(plan, cfg).bytes_for(2)
    choice = choose_micro_batch_size(plan, cfg, "CPU", need / memory_estimate.MARGIN + 1)
    assert choice.micro_batch_size == 2
    assert choice.line == (f"batch 2 as one forward (estimated {need / GB:.1f} GB for the whole batch, "
                           f"{(need / memory_estimate.MARGIN + 1) / GB:.1f} GB available)")


def test_the_largest_divisor_that_fits():
    cfg, plan = _shipped(*KITS21)
    cfg = cfg.replace(batch_size=4)
    est = estimate(plan, cfg)
    available = (est.bytes_for(2) + 1e6) / memory_estimate.MARGIN  # 2 fit, 4 do not
    choice = choose_micro_batch_size(plan, cfg, "CPU", available)
    assert choice.micro_batch_size == 2
    assert choice.line.startswith(f"batch 4 as 2 micro-batches of 2 (estimated {est.bytes_for(4) / GB:.1f} GB "
                                  f"for the whole batch, {available / GB:.1f} GB available")
    assert "warning" not in choice.line
    assert choose_micro_batch_size(plan, cfg, "CPU", available - 2e6).micro_batch_size == 1


def test_micro_batches_of_one_with_a_warning_when_one_sample_only_just_fits():
    cfg, plan = _shipped(*KITS21)
    one = estimate(plan, cfg).bytes_for(1)
    choice = choose_micro_batch_size(plan, cfg, "CPU", one + 1e6)  # within the memory, not within the margin
    assert choice.micro_batch_size == 1
    assert choice.line.startswith("batch 2 as 2 micro-batches of 1 (estimated ")
    assert "warning: even 1 sample is estimated at" in choice.line and "\n" not in choice.line


def test_auto_refuses_in_one_line_when_one_sample_does_not_fit_but_a_given_size_runs():
    cfg, plan = _shipped(*TRANSFER)
    with pytest.raises(UserError) as error:
        choose_micro_batch_size(plan, cfg, "CPU", 20 * GB)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("training res_unet_aspp at patch 128 x 128 x 128 on CPU needs about ")
    assert "more than the 20.0 GB this process may use" in message and "--micro_batch_size 1" in message
    assert choose_micro_batch_size(plan, cfg.replace(micro_batch_size="1"), "CPU", 20 * GB).micro_batch_size == 1
    assert choose_micro_batch_size(plan, cfg, "Ascend", 20 * GB).micro_batch_size == 2


def test_workers_of_one_node_share_its_memory():
    from src.train.micro_batches import local_workers, process_memory_budget
    assert local_workers(4, {"KITSEG_LOCAL_WORKERS": "2"}) == 2
    assert local_workers(4, {}) == 4 and local_workers(1, {"KITSEG_LOCAL_WORKERS": "x"}) == 1
    alone, shared = process_memory_budget(1), process_memory_budget(2)
    assert alone is not None and shared < alone


def test_accelerators_unknown_memory_and_given_sizes():
    cfg, plan = _shipped(*KITS21)
    assert choose_micro_batch_size(plan, cfg, "Ascend", 1.0).micro_batch_size == 2
    assert choose_micro_batch_size(plan, cfg, "GPU", 1.0).line == "batch 2 as one forward (micro_batch_size auto on GPU)"
    assert choose_micro_batch_size(plan, cfg, "CPU", None).micro_batch_size == 2
    given = choose_micro_batch_size(plan, cfg.replace(micro_batch_size="1"), "CPU", 1000 * GB)
    assert given.micro_batch_size == 1 and given.line == "batch 2 as 2 micro-batches of 1 (micro_batch_size 1)"


def test_more_samples_need_more_memory():
    cfg, plan = _shipped(*BDCI)
    est = estimate(plan, cfg)
    assert est.fixed_bytes < est.bytes_for(1) < est.bytes_for(2)
    bigger = Plan(dict(plan.to_json(), patch_size=[96, 160, 160]))
    assert estimate(bigger, cfg).sample_bytes > est.sample_bytes
