"""Forward + backward of the fused instance norm + LeakyReLU kernel alone (``src/models/cpu_kernels``), graph mode.

    python -m benchmarks.instance_norm [--shape 2 32 64 64 64] [--repeats 10] [--json]

The loss is ``sum(norm(x) * w)``, so the backward runs on a dense, non-uniform gradient; gamma in
[0.5, 1.5], beta normal. Prints the median and minimum wall time of one forward + backward (after two
untimed calls, the first of which compiles); the last line is one JSON object. The kernel's output is
taken as ``y`` or ``(y, inv_std)[0]``, so the same file times the kernel of an older checkout too.
"""
import src  # noqa: F401  (CPU fast-path environment before anything imports mindspore)

import argparse
import json
import statistics
import time

import numpy as np

from src.errors import UserError, exit_on_user_error


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=5, default=[2, 32, 64, 64, 64], metavar=("N", "C", "Z", "Y", "X"))
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--json", action="store_true", help="end with one JSON line (always printed last)")
    args = parser.parse_args(argv)
    if args.repeats < 1 or min(args.shape) < 1:
        raise UserError("--repeats and every --shape entry must be at least 1")
    return args


def build(library: str):
    from mindspore import nn, ops

    from src.models.cpu_kernels.instance_norm import FusedInstanceNormAct

    class Loss(nn.Cell):
        def __init__(self):
            super().__init__()
            self.norm = FusedInstanceNormAct(library, 1e-5, 0.01)

        def construct(self, x, gamma, beta, w):
            out = self.norm(x, gamma, beta)
            y = out[0] if isinstance(out, tuple) else out
            return (y * w).sum()

    class Gradients(nn.Cell):
        def __init__(self, network):
            super().__init__()
            self.network = network
            self.grad = ops.GradOperation(get_all=True)

        def construct(self, x, gamma, beta, w):
            return self.grad(self.network)(x, gamma, beta, w)

    return Gradients(Loss())


@exit_on_user_error
def main(argv=None):
    args = parse_args(argv)
    import mindspore as ms

    from src.models.cpu_kernels import availability
    from src.runtime.device import setup_device

    setup_device("CPU", "graph")
    available, library = availability()
    if not available:
        raise UserError(f"the compiled CPU kernels cannot run here: {library}")
    rng = np.random.default_rng(0)
    channels = args.shape[1]
    inputs = [ms.Tensor(rng.normal(size=args.shape).astype(np.float32)),
              ms.Tensor(rng.uniform(0.5, 1.5, channels).astype(np.float32)),
              ms.Tensor(rng.normal(size=channels).astype(np.float32)),
              ms.Tensor(rng.normal(size=args.shape).astype(np.float32))]
    gradients = build(library)
    for _ in range(2):
        gradients(*inputs)[0].asnumpy()
    walls = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        gradients(*inputs)[0].asnumpy()
        walls.append(time.perf_counter() - start)
    result = {"shape": args.shape, "repeats": args.repeats, "median_s": round(statistics.median(walls), 4),
              "min_s": round(min(walls), 4)}
    print(f"fused instance norm + LeakyReLU, forward + backward at {args.shape}: median {result['median_s']} s, "
          f"min {result['min_s']} s")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
