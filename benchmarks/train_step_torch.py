"""PyTorch side of ``benchmarks.train_step --reference``: nnU-Net's own network and loss, driven over stdin.

Runs in an environment with torch, dynamic-network-architectures and nnunetv2 (requirements-bench.txt),
never in the project's MindSpore venv. Protocol: prints ``ready <params>``, then answers each line
``train N`` / ``infer N`` with a JSON list of N [wall, CPU] step times in seconds; ``quit`` ends it.
For ``benchmarks.sliding_window`` it also answers ``window N STEP MIRROR Z Y X`` with N
[wall, CPU, network wall] times of whole-volume sliding-window prediction of ``smooth_volume((Z, Y, X))``
with windows of ``--patch``, ``--batch`` windows per network call, through the project's own
``src/infer/sliding_window.py`` (the same windows and numpy stitching as the MindSpore side).
"""
import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

SLIDING_WINDOW_SOURCE = Path(__file__).resolve().parents[1] / "src" / "infer" / "sliding_window.py"


def reference_network(stages: int, num_classes: int, base_features: int = 32):
    import torch
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    features = [min(base_features * 2 ** i, 320) for i in range(stages)]
    strides = [[1, 1, 1]] + [[2, 2, 2]] * (stages - 1)
    # conv_bias False: the same network as ours (a bias before instance norm has no effect)
    return PlainConvUNet(1, stages, features, torch.nn.Conv3d, 3, strides, 2, num_classes, 2, conv_bias=False,
                         norm_op=torch.nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True},
                         nonlin=torch.nn.LeakyReLU, nonlin_kwargs={"negative_slope": 1e-2, "inplace": True},
                         deep_supervision=True)


def reference_loss(stages: int):
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    loss = DC_and_CE_loss({"batch_dice": False, "smooth": 1e-5, "do_bg": False, "ddp": False}, {},
                          weight_ce=1, weight_dice=1, ignore_label=None, dice_class=MemoryEfficientSoftDiceLoss)
    weights = [1 / 2 ** i for i in range(stages - 1)]
    if len(weights) > 1:
        weights[-1] = 0
    total = sum(weights)
    return DeepSupervisionWrapper(loss, [w / total for w in weights])


def smooth_volume(shape, seed: int = 0):
    """A (1, *shape) float32 volume of Gaussian-smoothed noise scaled to mean 0, std 1: the same array
    on both sides of the comparison (numpy and scipy only)."""
    import numpy as np
    from scipy.ndimage import gaussian_filter

    noise = np.random.default_rng(seed).normal(size=tuple(shape))
    volume = gaussian_filter(noise, sigma=2.0)
    volume = (volume - volume.mean()) / volume.std()
    return volume[None].astype(np.float32)


def load_sliding_window_module():
    """``src/infer/sliding_window.py`` loaded by file path: importing the ``src`` package would cap
    oneDNN's ISA for this process (the MindSpore CPU fast path) and slow PyTorch down."""
    spec = importlib.util.spec_from_file_location("kitseg_sliding_window", SLIDING_WINDOW_SOURCE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class WindowRunner:
    """Whole-volume sliding-window prediction with the PyTorch network as the window predictor."""

    def __init__(self, net, patch, batch: int, num_classes: int):
        import torch

        self.torch = torch
        self.net = net
        self.patch = list(patch)
        self.batch = batch
        self.num_classes = num_classes
        self.sliding_window = load_sliding_window_module()
        self.volumes = {}
        self.network_seconds = 0.0

    def net_fn(self, windows):
        start = time.perf_counter()
        with self.torch.no_grad():
            logits = self.net(self.torch.from_numpy(windows)).numpy()
        self.network_seconds += time.perf_counter() - start
        return logits

    def volume(self, shape):
        if shape not in self.volumes:
            import numpy as np

            self.volumes[shape] = smooth_volume(shape)
            # untimed first call at the window batch shape (oneDNN primitive creation)
            self.net_fn(np.zeros((self.batch, 1, *self.patch), dtype=np.float32))
        return self.volumes[shape]

    def run(self, count: int, step_size: float, mirror: bool, shape) -> list:
        data = self.volume(shape)
        times = []
        for _ in range(count):
            self.network_seconds = 0.0
            wall, cpu = time.perf_counter(), time.process_time()
            logits = self.sliding_window.sliding_window_logits(data, self.net_fn, self.patch, self.num_classes,
                                                               step_size, self.batch, mirror, progress=False)
            times.append((time.perf_counter() - wall, time.process_time() - cpu, self.network_seconds))
            if logits.shape != (self.num_classes, *shape):
                raise RuntimeError(f"sliding window returned {logits.shape}")
        return times


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--patch", type=int, nargs=3, required=True)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--stages", type=int, required=True)
    parser.add_argument("--base_features", type=int, default=32)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    num_classes = 3
    net = reference_network(args.stages, num_classes, args.base_features)
    loss_fn = reference_loss(args.stages)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.99, nesterov=True, weight_decay=3e-5)
    rng = np.random.default_rng(args.seed)
    data = torch.from_numpy(rng.normal(size=(args.batch, 1, *args.patch)).astype(np.float32))
    seg = rng.integers(0, num_classes, size=(args.batch, 1, *args.patch))
    targets = []
    factor = 1
    for _ in range(args.stages - 1):
        targets.append(torch.from_numpy(np.ascontiguousarray(seg[:, :, ::factor, ::factor, ::factor])).float())
        factor *= 2
    single = data[:1].clone()

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(net(data), targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 12)
        optimizer.step()
        return float(loss.detach())

    def infer_step():
        with torch.no_grad():
            return net(single)

    params = sum(p.numel() for p in net.parameters())
    windows = WindowRunner(net, args.patch, args.batch, num_classes)
    print(f"ready {params}", flush=True)
    for line in sys.stdin:
        words = line.split()
        if not words or words[0] == "quit":
            break
        what, count = words[0], int(words[1])
        if what == "window":
            net.eval()
            net.decoder.deep_supervision = False
            shape = tuple(int(w) for w in words[4:7])
            print(json.dumps(windows.run(count, float(words[2]), words[3] == "1", shape)), flush=True)
            continue
        if what == "train":
            net.train()
            net.decoder.deep_supervision = True
            step = train_step
        else:
            net.eval()
            net.decoder.deep_supervision = False
            step = infer_step
        times = []
        for _ in range(count):
            wall, cpu = time.perf_counter(), time.process_time()
            step()
            times.append((time.perf_counter() - wall, time.process_time() - cpu))
        print(json.dumps(times), flush=True)


if __name__ == "__main__":
    main()
