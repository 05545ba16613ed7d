import numpy as np
import pytest
from scipy.special import softmax

from src.errors import UserError
from src.infer.predictor import (FixedBatchNetFn, Predictor, check_plans_agree, load_predictor,
                                 softmax_inplace)
from tests.infer.tiny_model import tiny_config, tiny_plan, write_tiny_checkpoint


def test_fixed_batch_splits_and_zero_fills():
    seen = []

    def net(windows):
        seen.append(windows.copy())
        return windows * 2

    fixed = FixedBatchNetFn(net, batch=2)
    x = np.arange(5 * 1 * 2 * 2 * 2, dtype=np.float32).reshape(5, 1, 2, 2, 2) + 1
    np.testing.assert_array_equal(fixed(x), 2 * x)
    assert [s.shape[0] for s in seen] == [2, 2, 2]
    assert not seen[-1][1].any()                       # the filler window is zeros


def test_softmax_inplace():
    logits = np.random.default_rng(0).normal(size=(3, 4, 5, 6)).astype(np.float32) * 10
    expected = softmax(logits.astype(np.float64), axis=0)
    out = softmax_inplace(logits)
    assert out is logits
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_ensemble_averages_softmax_of_each_model():
    plan = tiny_plan()
    data = np.random.default_rng(1).normal(size=(1, 10, 20, 18)).astype(np.float32)

    def first(windows):
        return np.concatenate([windows, -windows, 0 * windows], axis=1)

    def second(windows):
        return np.concatenate([windows ** 2, windows, np.ones_like(windows)], axis=1)

    ensemble = Predictor([first, second], plan, ["a", "b"], mirror=True, progress=False)
    single = [Predictor([fn], plan, ["x"], mirror=True, progress=False) for fn in (first, second)]
    probs = ensemble.predict_preprocessed(data)
    expected = (single[0].predict_preprocessed(data) + single[1].predict_preprocessed(data)) / 2
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, rtol=1e-5)
    with pytest.raises(UserError, match="preprocessed data"):
        ensemble.predict_preprocessed(data[0])


def test_plan_mismatch_is_a_user_error():
    with pytest.raises(UserError, match="target_spacing"):
        check_plans_agree(tiny_plan(), tiny_plan(target_spacing=[1.0, 1.0, 1.0]), "data", "model.ckpt")
    check_plans_agree(tiny_plan(), tiny_plan(features=[8, 16]), "data", "model.ckpt")


def test_checkpoint_predictor_reproduces_the_network(tmp_path, restore_mode):
    import mindspore as ms
    from src.models import build_network
    from src.runtime.checkpoint import load_network_weights

    ckpts = [write_tiny_checkpoint(tmp_path / f"m{i}.ckpt",
                                   seed=i) for i in range(2)]
    cfg = tiny_config(sw_batch_size=1)
    predictor = load_predictor(cfg, ckpts=[ckpts[0]], plan=tiny_plan(), progress=False)
    assert predictor.plan.num_classes == 3 and predictor.plan.patch_size == [8, 16, 16]

    reference = build_network(tiny_config(), tiny_plan())
    load_network_weights(reference, ckpts[0])
    reference.set_deep_supervision(False)
    reference.set_train(False)
    window = np.random.default_rng(2).normal(size=(1, 1, 8, 16, 16)).astype(np.float32)
    expected = reference(ms.Tensor(window)).asnumpy()
    # one window covering the whole volume: the Gaussian weighting cancels out
    logits = predictor.predict_logits(predictor.net_fns[0], window[0])
    np.testing.assert_allclose(logits, expected[0], rtol=1e-4, atol=1e-5)

    ensemble = load_predictor(cfg, ckpts=ckpts, progress=False)
    second = load_predictor(cfg, ckpts=[ckpts[1]], progress=False)
    volume = np.random.default_rng(3).normal(size=(1, 12, 20, 20)).astype(np.float32)
    both = ensemble.predict_preprocessed(volume)
    mean = (predictor.predict_preprocessed(volume) + second.predict_preprocessed(volume)) / 2
    np.testing.assert_allclose(both, mean, rtol=1e-4, atol=1e-6)


def test_checkpoint_that_does_not_fit_the_data_plan(tmp_path, restore_mode):
    ckpt = write_tiny_checkpoint(tmp_path / "m.ckpt")
    with pytest.raises(UserError, match="patch_size"):
        load_predictor(tiny_config(), ckpts=[ckpt], plan=tiny_plan(patch_size=[16, 16, 16]), progress=False)
    with pytest.raises(UserError, match="either"):
        load_predictor(tiny_config(), ckpts=None, mindir=None)
    with pytest.raises(UserError, match="not found"):
        load_predictor(tiny_config(), ckpts=[tmp_path / "missing.ckpt"])
