import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from src.errors import UserError
from src.runtime.device import cpu_thread_count, normalize_device_target

ROOT = Path(__file__).resolve().parents[2]

# Builds a seeded small U-Net and prints its inference output and one loss gradient as JSON.
PROBE = r"""
import json, sys
import src
import numpy as np
import mindspore as ms
from mindspore import Tensor, ops
from src.runtime.device import setup_device, fast_path_active
used = setup_device("CPU", "graph")
ms.set_seed(7)
from src.models.unet3d import PlainUNet3D
from src.losses import DiceCELoss
net = PlainUNet3D(1, 3, [4, 8], [[3, 3, 3], [3, 3, 3]], [[1, 1, 1], [2, 2, 2]], "conv", False)
rng = np.random.default_rng(3)
x = Tensor(rng.normal(size=(2, 1, 16, 16, 16)).astype(np.float32))
target = Tensor(rng.integers(0, 3, size=(2, 1, 16, 16, 16)).astype(np.int32))
loss = DiceCELoss(3)
net.set_train(True)
def forward(x, target):
    return loss(net(x), target)
value, grads = ms.jit(ops.value_and_grad(forward, None, net.trainable_params()))(x, target)
net.set_train(False)
out = net(x).asnumpy()
print(json.dumps({"device": used, "fast": fast_path_active(), "isa": __import__("os").environ.get("ONEDNN_MAX_CPU_ISA"),
                  "out": out.ravel()[::97].tolist(), "loss": float(value),
                  "grad": grads[0].asnumpy().ravel().tolist()}))
"""


def run_probe(fast: bool, tmp_path) -> dict:
    env = dict(os.environ)
    env.pop("ONEDNN_MAX_CPU_ISA", None)
    env["KITSEG_CPU_FAST_PATH"] = "1" if fast else "0"
    env["PYTHONPATH"] = str(ROOT)
    script = tmp_path / "probe.py"  # graph-mode source must live in a file
    script.write_text(PROBE)
    done = subprocess.run([sys.executable, str(script)], env=env, cwd=str(ROOT), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_fast_path_changes_speed_not_results(tmp_path):
    fast = run_probe(True, tmp_path)
    slow = run_probe(False, tmp_path)
    assert fast["device"] == slow["device"] == "CPU"
    assert fast["fast"] and fast["isa"] == "AVX2"
    assert not slow["fast"] and slow["isa"] is None
    np.testing.assert_allclose(fast["out"], slow["out"], rtol=1e-4, atol=1e-4)
    assert fast["loss"] == pytest.approx(slow["loss"], abs=1e-5)
    np.testing.assert_allclose(fast["grad"], slow["grad"], rtol=1e-3, atol=1e-5)


def test_device_names_are_normalised_and_checked():
    assert normalize_device_target("cpu") == "CPU"
    assert normalize_device_target(" ascend ") == "Ascend"
    with pytest.raises(UserError):
        normalize_device_target("TPU")


def test_thread_count_follows_affinity_and_override(monkeypatch):
    monkeypatch.delenv("KITSEG_CPU_THREADS", raising=False)
    assert cpu_thread_count() == len(os.sched_getaffinity(0))
    monkeypatch.setenv("KITSEG_CPU_THREADS", "3")
    assert cpu_thread_count() == 3
    monkeypatch.setenv("KITSEG_CPU_THREADS", "zero")
    with pytest.raises(UserError):
        cpu_thread_count()


def test_setup_device_in_a_fresh_process(tmp_path):
    script = tmp_path / "setup.py"
    script.write_text(
        "import src, mindspore as ms\n"
        "from src.runtime.device import setup_device, fast_path_active\n"
        "from src.errors import UserError\n"
        "print(setup_device('Ascend', 'pynative'), ms.get_context('mode') == ms.PYNATIVE_MODE)\n"
        "print(setup_device('cpu', 'graph'), ms.get_context('mode') == ms.GRAPH_MODE, fast_path_active())\n"
        "try:\n    setup_device('CPU', 'eager')\nexcept UserError as e:\n    print('rejected')\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT), KITSEG_CPU_FAST_PATH="1")
    env.pop("ONEDNN_MAX_CPU_ISA", None)
    done = subprocess.run([sys.executable, str(script)], env=env, cwd=str(ROOT), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()[-3:]
    assert lines == ["CPU True", "CPU True True", "rejected"]
    assert "Ascend is not available" in done.stderr


def test_setup_device_after_kernels_already_ran(tmp_path):
    """A process that already ran MindSpore kernels (as a full test run does) can still call setup_device."""
    script = tmp_path / "late_setup.py"
    script.write_text(
        "import src\nimport numpy as np\nimport mindspore as ms\n"
        "from src.runtime.device import setup_device\n"
        "print(float((ms.Tensor(np.ones(2, np.float32)) + 1).asnumpy().sum()))\n"
        "print(setup_device('CPU', mode='graph'), setup_device('CPU', mode='pynative'))\n")
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, str(script)], cwd=root, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(root)}, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[-2:] == ["CPU", "CPU"]
