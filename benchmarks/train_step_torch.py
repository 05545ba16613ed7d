"""PyTorch side of ``benchmarks.train_step --reference``: nnU-Net's own network and loss, driven over stdin.

Runs in an environment with torch, dynamic-network-architectures and nnunetv2 (requirements-bench.txt),
never in the project's MindSpore venv. Protocol: prints ``ready <params>``, then answers each line
``train N`` / ``infer N`` with a JSON list of N [wall, CPU] step times in seconds; ``quit`` ends it.
"""
import argparse
import json
import sys
import time


def reference_network(stages: int, num_classes: int):
    import torch
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    features = [min(32 * 2 ** i, 320) for i in range(stages)]
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


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--patch", type=int, nargs=3, required=True)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--stages", type=int, required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    num_classes = 3
    net = reference_network(args.stages, num_classes)
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
    print(f"ready {params}", flush=True)
    for line in sys.stdin:
        words = line.split()
        if not words or words[0] == "quit":
            break
        what, count = words[0], int(words[1])
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
