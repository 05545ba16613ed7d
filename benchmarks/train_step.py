"""Train-step and patch-inference timing of the plain nnU-Net U-Net, optionally next to PyTorch nnU-Net.

    python -m benchmarks.train_step --patch 64 64 64 --batch 2 --stages 5 --repeats 5 --json [--reference]

Network: features 32 * 2^i capped at 320, 3x3x3 kernels, strides [1,1,1] + [2,2,2] per further stage,
3 classes, deep supervision; one step = forward, nnU-Net Dice + CE over the deep-supervision outputs,
backward, gradient-norm clip 12, SGD (Nesterov 0.99, weight decay 3e-5) - the trainer's own cell.
``infer_s`` is one forward of one patch (batch 1) in inference mode. The last line printed is one
JSON object. ``--reference`` runs PyTorch nnU-Net (PlainConvUNet + its DC_and_CE_loss) in a
subprocess with ``--reference_python`` and interleaves the two step by step, so that both see the
same machine load, then prints the ratios (ours / PyTorch; below 1 = we are faster).
"""
import src  # noqa: F401  (the oneDNN ISA must be chosen before MindSpore is imported)

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from src.errors import UserError, exit_on_user_error

NUM_CLASSES = 3
TORCH_SIDE = Path(__file__).with_name("train_step_torch.py")


def benchmark_plan(patch, stages: int, base_features: int = 32) -> dict:
    if stages < 2:
        raise UserError("--stages must be at least 2")
    divisor = 2 ** (stages - 1)
    if any(p % divisor for p in patch):
        raise UserError(f"every patch axis must be a multiple of {divisor} for {stages} stages, got {list(patch)}")
    return {"features": [min(base_features * 2 ** i, 320) for i in range(stages)],
            "conv_kernel_sizes": [[3, 3, 3]] * stages,
            "strides": [[1, 1, 1]] + [[2, 2, 2]] * (stages - 1),
            "num_channels": 1, "num_classes": NUM_CLASSES}


def timed(step, count: int) -> list:
    """[(wall seconds, CPU seconds of this process over all its threads)] per call of ``step``."""
    times = []
    for _ in range(count):
        wall, cpu = time.perf_counter(), time.process_time()
        step()
        times.append((time.perf_counter() - wall, time.process_time() - cpu))
    return times


class MindSporeSide:
    """The network, loss and train cell exactly as the trainer builds them."""

    def __init__(self, patch, batch: int, stages: int, base_features: int = 32, seed: int = 0,
                 cpu_kernels: bool = True):
        import mindspore as ms
        from mindspore import nn

        from src.data.augment import deep_supervision_strides, downsample_seg_for_deep_supervision
        from src.losses import DeepSupervisionLoss, DiceCELoss, deep_supervision_weights
        from src.models.layers import count_parameters
        from src.models.cpu_kernels import select_cpu_kernels
        from src.models.unet3d import PlainUNet3D
        from src.train.train_cell import build_train_cell

        plan = benchmark_plan(patch, stages, base_features)
        ms.set_seed(seed)
        self.network = PlainUNet3D(1, NUM_CLASSES, plan["features"], plan["conv_kernel_sizes"], plan["strides"],
                                   "conv", True)
        self.params = count_parameters(self.network)
        self.cpu_kernel_layers = (select_cpu_kernels(self.network, release_isa_cap=True).layers
                                  if cpu_kernels else 0)
        loss = DeepSupervisionLoss(DiceCELoss(NUM_CLASSES), deep_supervision_weights(stages - 1))
        group = [{"params": self.network.trainable_params(), "weight_decay": 3e-5}]
        optimizer = nn.SGD(group, learning_rate=ms.Tensor(0.01, ms.float32), momentum=0.99, nesterov=True,
                           weight_decay=3e-5)
        self.train_cell = build_train_cell(self.network, loss, optimizer, 12.0, "O0")
        rng = np.random.default_rng(seed)
        data = rng.normal(size=(batch, 1, *patch)).astype(np.float32)
        seg = rng.integers(0, NUM_CLASSES, size=(batch, 1, *patch))
        self.inputs = [ms.Tensor(data)] + [ms.Tensor(t) for t in downsample_seg_for_deep_supervision(
            seg, deep_supervision_strides(plan["strides"]))]
        self.single = ms.Tensor(data[:1])
        self.mode = None

    def _set_mode(self, mode: str) -> None:
        if mode != self.mode:
            self.train_cell.set_train(mode == "train")
            self.network.set_train(mode == "train")
            self.mode = mode

    def train(self, count: int) -> list:
        self._set_mode("train")
        return timed(lambda: self.train_cell(*self.inputs).asnumpy(), count)

    def infer(self, count: int) -> list:
        self._set_mode("infer")
        return timed(lambda: self.network(self.single).asnumpy(), count)


class TorchSide:
    """PyTorch nnU-Net in a child process of another Python environment."""

    def __init__(self, python: str, patch, batch: int, stages: int, threads: int, passive_wait: bool = False,
                 base_features: int = 32):
        command = [python, str(TORCH_SIDE), "--patch", *map(str, patch), "--batch", str(batch),
                   "--stages", str(stages), "--threads", str(threads), "--base_features", str(base_features)]
        env = {k: v for k, v in os.environ.items() if k != "ONEDNN_MAX_CPU_ISA"}
        if passive_wait:
            # idle OpenMP threads sleep instead of spinning: on a busy machine spinning burns CPU time
            # that is then counted against PyTorch and steals cores from everyone else
            env["OMP_WAIT_POLICY"] = "PASSIVE"
        try:
            self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                            env=env)
        except OSError as err:
            raise UserError(f"cannot start the PyTorch reference with {python}: {err}") from None
        first = self.process.stdout.readline().split()
        if len(first) != 2 or first[0] != "ready":
            self.process.kill()
            raise UserError(f"the PyTorch reference did not start with {python} (needs torch, "
                            f"dynamic-network-architectures and nnunetv2: see requirements-bench.txt)")
        self.params = int(first[1])

    def _ask(self, what: str, count: int) -> list:
        self.process.stdin.write(f"{what} {count}\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())

    def train(self, count: int) -> list:
        return self._ask("train", count)

    def infer(self, count: int) -> list:
        return self._ask("infer", count)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.write("quit\n")
            self.process.stdin.flush()
            self.process.wait(timeout=60)


def interleaved(sides: list, what: str, warmup: int, repeats: int) -> list:
    """Per side (median wall, min wall, median CPU) seconds per step, alternating single steps so
    that both sides share the machine load.

    On a shared machine the minimum is the better estimate of the unloaded wall time, and the CPU
    time (all threads) is the least disturbed by other processes; all three are reported.
    """
    for side in sides:
        getattr(side, what)(warmup)
    times = [[] for _ in sides]
    for _ in range(repeats):
        for i, side in enumerate(sides):
            times[i] += getattr(side, what)(1)
    return [(statistics.median(w for w, _ in t), min(w for w, _ in t), statistics.median(c for _, c in t))
            for t in times]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patch", type=int, nargs=3, default=[64, 64, 64], metavar=("Z", "Y", "X"))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--stages", type=int, default=5)
    parser.add_argument("--base_features", type=int, default=32,
                        help="features of the first stage, doubled per stage up to 320 (the demo uses 8)")
    parser.add_argument("--kernels", choices=("compiled", "mindspore"), default="compiled",
                        help="our CPU kernels: the compiled oneDNN convolutions and fused instance norm "
                             "(src/models/cpu_kernels, the trainer's default) or MindSpore's own")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (the first one compiles)")
    parser.add_argument("--device_target", default="CPU")
    parser.add_argument("--json", action="store_true", help="end with one JSON line (always printed last)")
    parser.add_argument("--reference", action="store_true", help="also time PyTorch nnU-Net, interleaved")
    parser.add_argument("--reference_python", default=os.environ.get("KITSEG_REFERENCE_PYTHON", sys.executable),
                        help="Python with torch + dynamic-network-architectures + nnunetv2")
    parser.add_argument("--torch_passive_wait", action="store_true",
                        help="run PyTorch with OMP_WAIT_POLICY=PASSIVE (fairer CPU times on a shared machine)")
    args = parser.parse_args(argv)
    if args.batch < 1 or args.repeats < 1 or args.warmup < 1 or args.base_features < 1:
        raise UserError("--batch, --repeats, --warmup and --base_features must be at least 1")
    return args


@exit_on_user_error
def main(argv=None):
    args = parse_args(argv)
    benchmark_plan(args.patch, args.stages, args.base_features)
    from src.runtime.device import cpu_thread_count, fast_path_active, setup_device

    device = setup_device(args.device_target, "graph")
    ours = MindSporeSide(args.patch, args.batch, args.stages, args.base_features, cpu_kernels=args.kernels == "compiled")
    sides = [ours]
    if args.reference:
        sides.append(TorchSide(args.reference_python, args.patch, args.batch, args.stages, cpu_thread_count(),
                               args.torch_passive_wait, args.base_features))
    try:
        train = interleaved(sides, "train", args.warmup, args.repeats)
        infer = interleaved(sides, "infer", args.warmup, args.repeats)
    finally:
        for side in sides[1:]:
            side.close()
    result = {"params": ours.params, "train_step_s": round(train[0][0], 4), "infer_s": round(infer[0][0], 4),
              "train_step_min_s": round(train[0][1], 4), "infer_min_s": round(infer[0][1], 4),
              "train_step_cpu_s": round(train[0][2], 4), "infer_cpu_s": round(infer[0][2], 4),
              "device": device, "fast_path": fast_path_active(), "onednn_isa_cap": os.environ.get("ONEDNN_MAX_CPU_ISA"),
              "cpu_kernel_layers": ours.cpu_kernel_layers, "threads": cpu_thread_count(),
              "patch": args.patch, "batch": args.batch, "stages": args.stages, "repeats": args.repeats}
    print(f"MindSpore  params {ours.params:,}  train step {train[0][0]:.3f} s (min {train[0][1]:.3f})  "
          f"patch forward {infer[0][0]:.3f} s (min {infer[0][1]:.3f}), CPU {train[0][2]:.3f} / {infer[0][2]:.3f} s  "
          f"(fast path {'on' if result['fast_path'] else 'off'}, {result['threads']} threads)")
    if args.reference:
        torch_side = sides[1]
        result.update({"torch_params": torch_side.params, "torch_train_step_s": round(train[1][0], 4),
                       "torch_infer_s": round(infer[1][0], 4), "torch_train_step_min_s": round(train[1][1], 4),
                       "torch_infer_min_s": round(infer[1][1], 4),
                       "torch_train_step_cpu_s": round(train[1][2], 4), "torch_infer_cpu_s": round(infer[1][2], 4),
                       "train_ratio": round(train[0][0] / train[1][0], 3),
                       "infer_ratio": round(infer[0][0] / infer[1][0], 3),
                       "train_ratio_min": round(train[0][1] / train[1][1], 3),
                       "infer_ratio_min": round(infer[0][1] / infer[1][1], 3),
                       "train_ratio_cpu": round(train[0][2] / train[1][2], 3),
                       "infer_ratio_cpu": round(infer[0][2] / infer[1][2], 3)})
        print(f"PyTorch    params {torch_side.params:,}  train step {train[1][0]:.3f} s (min {train[1][1]:.3f})  "
              f"patch forward {infer[1][0]:.3f} s (min {infer[1][1]:.3f}), CPU {train[1][2]:.3f} / {infer[1][2]:.3f} s")
        print(f"ratio (MindSpore / PyTorch), train step / patch forward: wall medians {result['train_ratio']:.2f} / "
              f"{result['infer_ratio']:.2f}, wall minima {result['train_ratio_min']:.2f} / "
              f"{result['infer_ratio_min']:.2f}, CPU time {result['train_ratio_cpu']:.2f} / {result['infer_ratio_cpu']:.2f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
