import numpy as np
import pytest

from src.config import Config
from src.data.dataset import PatchBatchSource, build_val_dataset, iterate_batches, make_source
from src.data.preprocessed_case import load_case
from src.data.sampler import crop_with_padding, sample_patch_bbox
from src.data.plan import Plan
from src.errors import UserError
from tests.data.preprocessed_fixture import DEFAULT_PATCH, make_preprocessed_folder


def config(**changes):
    values = dict(seed=7, batch_size=2, iters_per_epoch=3, val_iters=2, num_workers=2, oversample_foreground=0.33)
    values.update(changes)
    return Config(**values)


def plan_of(folder):
    return Plan.read(folder / "plans.json")


def batches(folder, cfg=None, **kwargs):
    plan = plan_of(folder)
    return list(iterate_batches(cfg or config(), plan, folder, plan.cases, **kwargs))


def assert_same(a, b):
    assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def test_batches_have_the_contract_shapes_and_dtypes(preprocessed_dir):
    for train in (True, False):
        for batch in batches(preprocessed_dir, train=train):
            data, *segs = batch
            assert data.shape == (2, 1, *DEFAULT_PATCH) and data.dtype == np.float32
            # plan strides [1,1,1], [2,2,2], [2,2,2], [1,2,2]: 4 stages -> 3 decoder outputs
            assert [s.shape for s in segs] == [(2, 1, 16, 32, 32), (2, 1, 8, 16, 16), (2, 1, 4, 8, 8)]
            assert all(s.dtype == np.int32 and s.min() >= 0 and s.max() <= 2 for s in segs)
            np.testing.assert_array_equal(segs[1], segs[0][:, :, 1::2, 1::2, 1::2])


def test_without_deep_supervision_only_full_resolution_targets(preprocessed_dir):
    source = make_source(config(deep_supervision=False), plan_of(preprocessed_dir), preprocessed_dir,
                         ["case_00000"])
    assert source.column_names == ["data", "seg_0"]
    assert len(source[0]) == 2 and source[0][1].shape == (2, 1, *DEFAULT_PATCH)


@pytest.mark.parametrize("train", [True, False])
def test_last_third_of_each_batch_holds_foreground(preprocessed_dir, train):
    cfg = config(batch_size=3, iters_per_epoch=15, val_iters=15)
    for _, seg, *_ in batches(preprocessed_dir, cfg, train=train):
        # round(0.33 * 3) = 1 forced sample; every fixture case has foreground
        assert seg[2].max() > 0


def test_same_seed_epoch_and_index_give_the_same_batch(preprocessed_dir):
    first = batches(preprocessed_dir, epoch=4)
    assert_same(first[1], batches(preprocessed_dir, epoch=4)[1])
    assert not np.array_equal(first[0][0], first[1][0])  # another index: another batch
    assert not np.array_equal(first[0][0], batches(preprocessed_dir, epoch=5)[0][0])  # another epoch
    assert not np.array_equal(first[0][0], batches(preprocessed_dir, config(seed=8), epoch=4)[0][0])
    # one long dataset from epoch 3 holds exactly the batches of the per-epoch dataset of epoch 4 (resume)
    long_run = batches(preprocessed_dir, epoch=3, num_epochs=2)
    for a, b in zip(long_run[3:], first):
        assert_same(a, b)
    # the trainer's form: one seed per epoch
    assert_same(batches(preprocessed_dir, epoch_seed=99)[0], batches(preprocessed_dir, epoch_seed=99)[0])
    assert not np.array_equal(batches(preprocessed_dir, epoch_seed=99)[0][0],
                              batches(preprocessed_dir, epoch_seed=100)[0][0])


def test_validation_streams_differ_from_training_and_are_not_augmented(preprocessed_dir):
    cfg = config()
    plan = plan_of(preprocessed_dir)
    source = make_source(cfg, plan, preprocessed_dir, plan.cases, epoch=0, train=False)
    assert not source.augment
    rng = source.sample_streams(0)[1]
    replay = source.sample_streams(0)[1]
    data, seg = source.sample(rng, force_fg=True)
    case = load_case(preprocessed_dir, plan.cases[replay.integers(len(plan.cases))])
    box = sample_patch_bbox(case.shape, DEFAULT_PATCH, True, case.fg_locations, replay)
    np.testing.assert_array_equal(data, crop_with_padding(case.data, box, 0.0))
    np.testing.assert_array_equal(seg, np.maximum(crop_with_padding(case.seg, box, -1), 0))
    train = batches(preprocessed_dir, cfg)
    val = batches(preprocessed_dir, cfg, train=False)
    assert not np.array_equal(train[0][0], val[0][0])


def test_ranks_get_disjoint_shards_of_the_same_epoch(preprocessed_dir):
    whole = make_source(config(), plan_of(preprocessed_dir), preprocessed_dir, plan_of(preprocessed_dir).cases,
                        world=2)
    assert len(whole) == 6
    rank0 = batches(preprocessed_dir, rank=0, world=2)
    rank1 = batches(preprocessed_dir, rank=1, world=2)
    assert len(rank0) == len(rank1) == 3
    for i in range(3):
        assert_same(rank0[i], whole[2 * i])
        assert_same(rank1[i], whole[2 * i + 1])


def test_forced_sample_on_a_case_without_foreground_is_random(tmp_path):
    folder = tmp_path / "pre"
    make_preprocessed_folder(folder, shapes={"case_empty": (20, 36, 36)}, empty_case="case_empty")
    for _, seg, *_ in batches(folder):
        assert seg.max() == 0


def test_source_state_is_small_and_checks_its_input(preprocessed_dir):
    import pickle
    source = make_source(config(), plan_of(preprocessed_dir), preprocessed_dir, ["case_00000"])
    source[0]
    assert len(pickle.dumps(source)) < 2000
    with pytest.raises(IndexError):
        source[len(source)]
    with pytest.raises(UserError):
        PatchBatchSource(preprocessed_dir, [], DEFAULT_PATCH, 2, 0.33, [(1, 1, 1)], 0, 0, 1, 1, True)
    assert build_val_dataset(config(val_iters=0), plan_of(preprocessed_dir), preprocessed_dir, ["x"]) is None


@pytest.mark.parametrize("world, rank", [(1, 0), (2, 1)])
def test_mindspore_dataset_with_two_worker_processes_yields_the_python_batches(preprocessed_dir, world, rank):
    from src.data.dataset import build_train_dataset

    cfg = config(num_workers=2)
    plan = plan_of(preprocessed_dir)
    dataset = build_train_dataset(cfg, plan, preprocessed_dir, plan.cases, epoch=2, rank=rank, world=world)
    assert dataset.get_col_names() == ["data", "seg_0", "seg_1", "seg_2"]
    got = list(dataset.create_tuple_iterator(num_epochs=1, output_numpy=True))
    expected = batches(preprocessed_dir, cfg, epoch=2, rank=rank, world=world)
    assert len(got) == len(expected) == 3
    for a, b in zip(got, expected):
        assert [x.dtype for x in a] == [np.float32, np.int32, np.int32, np.int32]
        assert_same(a, b)


def child_pids() -> set:
    import os
    children = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == os.getpid():
                children.add(int(entry))
    return children


def test_started_batches_forks_the_workers_before_returning_and_hands_out_every_batch(preprocessed_dir):
    # the workers must be forked while the trainer is small, not at the first batch it asks for
    from src.data.dataset import build_val_dataset, started_batches

    cfg = config(num_workers=2)
    plan = plan_of(preprocessed_dir)
    before = child_pids()
    dataset = build_val_dataset(cfg, plan, preprocessed_dir, plan.cases, num_epochs=2)
    created = child_pids() - before
    batches_out = started_batches(dataset)
    running = child_pids() - before - created
    assert len(running) >= 2  # the two workers (and MindSpore's clean-up process)
    got = [tuple(t.asnumpy() for t in batch) for batch in batches_out]
    expected = batches(preprocessed_dir, cfg, train=False, num_epochs=2)
    assert len(got) == len(expected) == 4
    for a, b in zip(got, expected):
        assert_same(a, b)
