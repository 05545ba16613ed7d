"""Training and validation batches as a MindSpore dataset fed by worker processes.

``PatchBatchSource`` is random access: batch ``i`` is a pure function of (seed, stream, epoch, i), drawn
from its own ``numpy.random.SeedSequence`` stream, so it is the same whichever worker builds it, however
many workers run, and after a resume; every batch, hence every worker and epoch, gets a distinct stream.
Its state is a few paths and plan numbers, cheap to copy into worker processes.
"""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

from src.data.augment import build_train_transforms, deep_supervision_strides, downsample_seg_for_deep_supervision
from src.data.partial_labels import partial_targets, plan_task_channels, read_case_tasks
from src.data.plan import Plan, plan_file
from src.data.preprocessed_case import load_case
from src.data.sampler import PAD_DATA, PAD_SEG, centred_bbox, crop_with_padding, oversample_mask, sample_patch_bbox
from src.cpu_env import cap_workers
from src.errors import UserError

TRAIN_STREAM = 0
VAL_STREAM = 1


class PatchBatchSource:
    """Whole batches ``(data (B,C,*patch) float32, seg_0 .. seg_{S-1} (B,1,...) int32)``.

    Items are laid out epoch by epoch: index = (epoch - first_epoch) * batches_per_epoch + batch.
    Each sample picks a case uniformly (with replacement), then a patch box: the last
    round(oversample * B) samples are centred on foreground (nnU-Net), the others anywhere.
    """

    def __init__(self, pre_dir, case_ids, patch_size, batch_size: int, oversample_foreground: float,
                 ds_strides, seed: int, first_epoch: int, num_epochs: int, batches_per_epoch: int,
                 augment: bool, stream: int = TRAIN_STREAM, plan_id: str | None = None):
        if not case_ids:
            raise UserError(f"no cases to draw patches from in {pre_dir}")
        self.pre_dir = str(pre_dir)
        self.case_ids = [str(c) for c in case_ids]
        self.patch_size = tuple(int(p) for p in patch_size)
        self.batch_size = int(batch_size)
        self.force_fg = oversample_mask(self.batch_size, oversample_foreground)
        self.ds_strides = [tuple(s) for s in ds_strides]
        self.seed = int(seed)
        self.first_epoch = int(first_epoch)
        self.num_epochs = int(num_epochs)
        self.batches_per_epoch = int(batches_per_epoch)
        self.augment = bool(augment)
        self.stream = int(stream)
        self.plan_id = plan_id  # every case read is checked against it (preprocessed_case.load_case)
        self._transforms = None

    @property
    def column_names(self) -> list:
        return ["data"] + [f"seg_{i}" for i in range(len(self.ds_strides))]

    def __len__(self) -> int:
        return self.num_epochs * self.batches_per_epoch

    def sample_streams(self, index: int) -> list:
        """One generator per batch item, keyed by (stream, epoch, batch, item)."""
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} out of range({len(self)})")
        epoch, batch = divmod(index, self.batches_per_epoch)
        root = np.random.SeedSequence(self.seed, spawn_key=(self.stream, self.first_epoch + epoch, batch))
        return [np.random.default_rng(child) for child in root.spawn(self.batch_size)]

    def __getitem__(self, index):
        samples = [self.sample(rng, bool(force)) for rng, force in zip(self.sample_streams(int(index)),
                                                                       self.force_fg)]
        data = np.stack([d for d, _ in samples])
        seg = np.stack([s for _, s in samples])[:, None].astype(np.int32)
        return (data, *downsample_seg_for_deep_supervision(seg, self.ds_strides))

    def sample(self, rng: np.random.Generator, force_fg: bool):
        """One (data (C,*patch) float32, seg (*patch) with -1 reset to 0) sample."""
        return self.sample_case(self.draw_case(rng), rng, force_fg)

    def draw_case(self, rng: np.random.Generator) -> str:
        return self.case_ids[rng.integers(len(self.case_ids))]

    def sample_case(self, case_id: str, rng: np.random.Generator, force_fg: bool):
        case = load_case(self.pre_dir, case_id, self.plan_id)
        bbox = sample_patch_bbox(case.shape, self.patch_size, force_fg, case.fg_locations, rng)
        if not self.augment:
            data = crop_with_padding(case.data, bbox, PAD_DATA)
            seg = crop_with_padding(case.seg, bbox, PAD_SEG)
            return data, np.where(seg == PAD_SEG, 0, seg)

        def cut_region(shape):
            region = centred_bbox(bbox, shape)
            return crop_with_padding(case.data, region, PAD_DATA), crop_with_padding(case.seg, region, PAD_SEG)

        if self._transforms is None:
            self._transforms = build_train_transforms(self.patch_size)
        data, seg = self._transforms.augment_region(cut_region, rng)
        return np.ascontiguousarray(data, dtype=np.float32), np.ascontiguousarray(seg)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_transforms"] = None
        return state

    @classmethod
    def case_arguments(cls, pre_dir, case_ids, plan) -> dict:
        """What this source needs to know about the cases beyond their files (nothing: the labels as stored)."""
        return {}


class PartialLabelBatchSource(PatchBatchSource):
    """DoDNet batches ``(data, task_id (B,) int32, seg_0 (B, 2, *patch) int32)``: each sample's label
    patch becomes its task's (organ, tumour) targets, -1 in a channel the task does not annotate."""

    def __init__(self, *args, case_tasks: dict, task_channels: dict, **kwargs):
        super().__init__(*args, **kwargs)
        self.case_tasks = dict(case_tasks)
        self.task_channels = dict(task_channels)

    @property
    def column_names(self) -> list:
        return ["data", "task_id"] + [f"seg_{i}" for i in range(len(self.ds_strides))]

    @classmethod
    def case_arguments(cls, pre_dir, case_ids, plan) -> dict:
        """Each case's task and each task's annotated channels."""
        return {"case_tasks": read_case_tasks(pre_dir, case_ids),
                "task_channels": plan_task_channels(plan, str(plan_file(pre_dir)))}

    def __getitem__(self, index):
        data, segs, task_ids = [], [], []
        for rng, force in zip(self.sample_streams(int(index)), self.force_fg):
            case_id = self.draw_case(rng)
            patch, seg = self.sample_case(case_id, rng, bool(force))
            data.append(patch)
            segs.append(seg)
            task_ids.append(self.case_tasks[case_id])
        targets = partial_targets(np.stack(segs), task_ids, self.task_channels)
        return (np.stack(data), np.asarray(task_ids, dtype=np.int32),
                *downsample_seg_for_deep_supervision(targets, self.ds_strides))


# The batch source of each variant's ``batch_source`` kind (src/variants.py)
BATCH_SOURCES = {"patches": PatchBatchSource, "partial_labels": PartialLabelBatchSource}


def make_source(cfg, plan: Plan, pre_dir, case_ids, epoch: int = 0, rank: int = 0, world: int = 1,
                train: bool = True, num_epochs: int = 1, epoch_seed=None) -> PatchBatchSource:
    """The batch source both loaders wrap: cfg.iters_per_epoch (train) or cfg.val_iters (validation)
    batches per rank and epoch, ``world`` times that in total for the data-parallel shards."""
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in a world of {world}")
    # a variant without deep-supervision heads (DoDNet) is supervised at full resolution only
    deep_supervision = bool(cfg.deep_supervision) and cfg.variant.deep_supervision
    ds_strides = deep_supervision_strides(plan.strides, deep_supervision) or [(1, 1, 1)]
    per_rank = cfg.iters_per_epoch if train else cfg.val_iters
    source_class = BATCH_SOURCES[cfg.variant.batch_source]
    return source_class(
        pre_dir, case_ids, plan.patch_size, cfg.batch_size, cfg.oversample_foreground, ds_strides,
        seed=cfg.seed if epoch_seed is None else int(epoch_seed), first_epoch=epoch, num_epochs=num_epochs,
        batches_per_epoch=per_rank * world, augment=train and cfg.augment,
        stream=TRAIN_STREAM if train else VAL_STREAM, plan_id=plan.identity,
        **source_class.case_arguments(pre_dir, case_ids, plan))


def _to_mindspore(source: PatchBatchSource, num_workers: int, rank: int, world: int):
    import mindspore.dataset as msds

    # MindSpore refuses more workers than CPUs (ValueError: num_parallel_workers exceeds the boundary)
    workers = cap_workers(num_workers, "data loader (num_workers)")
    shards = {"num_shards": world, "shard_id": rank} if world > 1 else {}
    # max_rowsize is left at its 2.10 default (None: shared memory sized to each batch); -1 means the
    # same but is deprecated and warns.
    return msds.GeneratorDataset(source, column_names=source.column_names, shuffle=False,
                                 num_parallel_workers=workers, python_multiprocessing=workers > 1, **shards)


def started_batches(dataset):
    """The batches of ``dataset`` (one tuple iterator over all its epochs) with its worker processes running.

    MindSpore forks a pipeline's workers, and a clean-up process, when its first batch is asked for. A fork
    made later, from a trainer that holds its activations, keeps a copy of every page the trainer then
    rewrites (copy-on-write): in the kits21_transfer rehearsal the validation pipeline's three processes,
    forked at its first validation from a 17.6 GB trainer, grew by 4.4 GB each within seconds. So the first
    batch is asked for here, before any graph has run, and handed out first."""
    batches = dataset.create_tuple_iterator(num_epochs=1)
    first = next(batches)
    return itertools.chain([first], batches)


def build_train_dataset(cfg, plan: Plan, pre_dir, case_ids, epoch: int = 0, rank: int = 0, world: int = 1,
                        epoch_seed=None, num_epochs: int = 1):
    """Augmented batches for epochs [epoch, epoch + num_epochs): cfg.iters_per_epoch per rank and epoch.

    Seeded by (cfg.seed, epoch) - or by ``epoch_seed`` when given - so a resumed run sees the same data.
    """
    source = make_source(cfg, plan, Path(pre_dir), case_ids, epoch, rank, world, True, num_epochs, epoch_seed)
    return _to_mindspore(source, cfg.num_workers, rank, world)


def build_val_dataset(cfg, plan: Plan, pre_dir, case_ids, epoch: int = 0, rank: int = 0, world: int = 1,
                      epoch_seed=None, num_epochs: int = 1):
    """cfg.val_iters batches per rank and epoch, not augmented, with the same foreground oversampling;
    None when cfg.val_iters is 0."""
    if cfg.val_iters == 0:
        return None
    source = make_source(cfg, plan, Path(pre_dir), case_ids, epoch, rank, world, False, num_epochs, epoch_seed)
    return _to_mindspore(source, cfg.num_workers, rank, world)


def iterate_batches(cfg, plan: Plan, pre_dir, case_ids, epoch: int = 0, train: bool = True, rank: int = 0,
                    world: int = 1, num_epochs: int = 1, epoch_seed=None):
    """The same batches as the MindSpore datasets, in this process (tests, benchmarks); the rank's shard
    is every world-th batch, as MindSpore's distributed sampler deals them out."""
    source = make_source(cfg, plan, Path(pre_dir), case_ids, epoch, rank, world, train, num_epochs, epoch_seed)
    for index in range(rank, len(source), world):
        yield source[index]
