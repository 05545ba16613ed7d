"""Whole-volume sliding-window prediction time of the plain nnU-Net U-Net, optionally next to PyTorch.

    python -m benchmarks.sliding_window --shape 64 160 160 --patch 48 96 96 --stages 5 [--mirror]
                                        [--reference] [--repeats 3] [--json]

One synthetic preprocessed volume (Gaussian-smoothed noise, mean 0, std 1) is predicted whole with
Gaussian-weighted sliding windows (step 0.5, ``--sw_batch_size`` windows per network call, optional
8-fold mirroring) by ``src/infer/sliding_window.py`` with the plain U-Net of ``benchmarks.train_step``
(features 32 * 2^i capped at 320, 3 classes, random weights) in MindSpore graph mode, called through
the predictor's own ``CellNetFn``. ``--reference`` runs the identical computation in a child process of
``--reference_python`` with nnU-Net's ``PlainConvUNet`` (PyTorch, same threads) as the window
predictor: the same volume, the same windows, the same numpy stitching code (loaded from this
repository), so only the network forward differs. Whole-case runs alternate ours / theirs so both
see the same machine load; per side the median and minimum wall time, the median CPU time and the
median time spent inside the network are reported, and the ratios ours / PyTorch (below 1 = we are
faster). The last line printed is one JSON object.
"""
import src  # noqa: F401  (the oneDNN ISA must be chosen before MindSpore is imported)

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

from benchmarks.train_step import NUM_CLASSES, TorchSide, benchmark_plan
from benchmarks.train_step_torch import smooth_volume
from src.errors import UserError, exit_on_user_error
from src.infer.sliding_window import sliding_window_logits, window_layout


class MindSporeWindowSide:
    """Our network in inference mode behind the predictor's numpy adapter, counting network time."""

    def __init__(self, shape, patch, stages: int, batch: int, step_size: float, mirror: bool, seed: int = 0,
                 cpu_kernels: bool = True):
        import mindspore as ms

        from src.infer.predictor import CellNetFn
        from src.models.layers import count_parameters
        from src.models.cpu_kernels import select_cpu_kernels
        from src.models.unet3d import PlainUNet3D

        plan = benchmark_plan(patch, stages)
        ms.set_seed(seed)
        network = PlainUNet3D(1, NUM_CLASSES, plan["features"], plan["conv_kernel_sizes"], plan["strides"],
                              "conv", False)
        network.set_train(False)
        self.params = count_parameters(network)
        self.cpu_kernel_layers = select_cpu_kernels(network, release_isa_cap=True).layers if cpu_kernels else 0
        self.cell_fn = CellNetFn(network)
        self.patch, self.batch, self.step_size, self.mirror = list(patch), batch, step_size, mirror
        self.data = smooth_volume(shape, seed)
        self.network_seconds = 0.0
        # the first call compiles the graph for the window batch shape; not part of any timing
        self.net_fn(np.zeros((batch, 1, *patch), dtype=np.float32))

    def net_fn(self, windows: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        logits = self.cell_fn(windows)
        self.network_seconds += time.perf_counter() - start
        return logits

    def window(self, count: int) -> list:
        times = []
        for _ in range(count):
            self.network_seconds = 0.0
            wall, cpu = time.perf_counter(), time.process_time()
            logits = sliding_window_logits(self.data, self.net_fn, self.patch, NUM_CLASSES, self.step_size,
                                           self.batch, self.mirror, progress=False)
            times.append((time.perf_counter() - wall, time.process_time() - cpu, self.network_seconds))
            if logits.shape != (NUM_CLASSES, *self.data.shape[1:]) or not np.isfinite(logits).all():
                raise RuntimeError(f"sliding window returned {logits.shape} or non-finite logits")
        return times


class TorchWindowSide(TorchSide):
    """The PyTorch reference child of ``benchmarks.train_step``, asked for whole-volume predictions."""

    def __init__(self, python: str, shape, patch, stages: int, batch: int, threads: int, step_size: float,
                 mirror: bool):
        super().__init__(python, patch, batch, stages, threads)
        self.request = f"{step_size} {int(mirror)} {' '.join(map(str, shape))}"

    def window(self, count: int) -> list:
        self.process.stdin.write(f"window {count} {self.request}\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())


def interleaved_cases(sides: list, repeats: int) -> list:
    """Per side {median, min wall; median CPU; median network wall} seconds per whole volume, one
    volume per side in turn so that both share the machine load."""
    times = [[] for _ in sides]
    for _ in range(repeats):
        for i, side in enumerate(sides):
            times[i] += side.window(1)
    return [{"case_s": statistics.median(t[0] for t in runs), "case_min_s": min(t[0] for t in runs),
             "case_cpu_s": statistics.median(t[1] for t in runs), "network_s": statistics.median(t[2] for t in runs)}
            for runs in times]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[64, 160, 160], metavar=("Z", "Y", "X"))
    parser.add_argument("--patch", type=int, nargs=3, default=[48, 96, 96], metavar=("Z", "Y", "X"))
    parser.add_argument("--stages", type=int, default=5)
    parser.add_argument("--step_size", type=float, default=0.5)
    parser.add_argument("--sw_batch_size", type=int, default=2, help="windows per network call")
    parser.add_argument("--mirror", action="store_true", help="8-fold test-time mirroring (8x the time)")
    parser.add_argument("--kernels", choices=("compiled", "mindspore"), default="compiled",
                        help="our CPU kernels: the compiled oneDNN convolutions and fused instance norm "
                             "(src/models/cpu_kernels, the predictor's default) or MindSpore's own")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device_target", default="CPU")
    parser.add_argument("--json", action="store_true", help="end with one JSON line (always printed last)")
    parser.add_argument("--reference", action="store_true", help="also time PyTorch nnU-Net's network, interleaved")
    parser.add_argument("--reference_python", default=os.environ.get("KITSEG_REFERENCE_PYTHON", sys.executable),
                        help="Python with torch + dynamic-network-architectures + nnunetv2")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.sw_batch_size < 1:
        raise UserError("--repeats and --sw_batch_size must be at least 1")
    if not 0 < args.step_size <= 1:
        raise UserError(f"--step_size must be in (0, 1], got {args.step_size}")
    if any(s < p for s, p in zip(args.shape, args.patch)):
        raise UserError(f"--shape {args.shape} must be at least --patch {args.patch} on every axis")
    benchmark_plan(args.patch, args.stages)
    return args


def rounded(stats: dict, prefix: str = "") -> dict:
    return {prefix + key: round(value, 3) for key, value in stats.items()}


@exit_on_user_error
def main(argv=None):
    args = parse_args(argv)
    from src.runtime.device import cpu_thread_count, fast_path_active, setup_device

    device = setup_device(args.device_target, "graph")
    load_before = os.getloadavg()
    ours = MindSporeWindowSide(args.shape, args.patch, args.stages, args.sw_batch_size, args.step_size, args.mirror,
                               cpu_kernels=args.kernels == "compiled")
    sides = [ours]
    if args.reference:
        sides.append(TorchWindowSide(args.reference_python, args.shape, args.patch, args.stages, args.sw_batch_size,
                                     cpu_thread_count(), args.step_size, args.mirror))
    try:
        stats = interleaved_cases(sides, args.repeats)
    finally:
        for side in sides[1:]:
            side.close()
    windows = len(window_layout(args.shape, args.patch, args.step_size).starts)
    result = {"params": ours.params, **rounded(stats[0]), "windows": windows, "shape": args.shape,
              "patch": args.patch, "stages": args.stages, "step_size": args.step_size,
              "sw_batch_size": args.sw_batch_size, "mirror": args.mirror, "repeats": args.repeats,
              "device": device, "fast_path": fast_path_active(), "onednn_isa_cap": os.environ.get("ONEDNN_MAX_CPU_ISA"),
              "cpu_kernel_layers": ours.cpu_kernel_layers,
              "threads": cpu_thread_count(), "load_average_start": [round(v, 2) for v in load_before],
              "load_average_end": [round(v, 2) for v in os.getloadavg()]}
    print(f"MindSpore  params {ours.params:,}  {windows} windows of {args.patch} over {args.shape}: "
          f"{stats[0]['case_s']:.2f} s (min {stats[0]['case_min_s']:.2f}), CPU {stats[0]['case_cpu_s']:.2f} s, "
          f"network {stats[0]['network_s']:.2f} s")
    if args.reference:
        theirs = stats[1]
        result.update({"torch_params": sides[1].params, **rounded(theirs, "torch_"),
                       "case_ratio": round(stats[0]["case_s"] / theirs["case_s"], 3),
                       "case_ratio_min": round(stats[0]["case_min_s"] / theirs["case_min_s"], 3),
                       "case_ratio_cpu": round(stats[0]["case_cpu_s"] / theirs["case_cpu_s"], 3),
                       "network_ratio": round(stats[0]["network_s"] / theirs["network_s"], 3)})
        print(f"PyTorch    params {sides[1].params:,}  {theirs['case_s']:.2f} s (min {theirs['case_min_s']:.2f}), "
              f"CPU {theirs['case_cpu_s']:.2f} s, network {theirs['network_s']:.2f} s")
        print(f"ratio (MindSpore / PyTorch), whole volume: wall median {result['case_ratio']:.2f}, wall minimum "
              f"{result['case_ratio_min']:.2f}, CPU time {result['case_ratio_cpu']:.2f}, network median "
              f"{result['network_ratio']:.2f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
