"""Faster CPU convolutions: oneDNN's blocked-layout kernels inside MindSpore graphs (``ops.Custom`` aot).

MindSpore's CPU Conv3d hands oneDNN plain NCDHW tensors, which leaves it only the im2col GEMM kernels;
``onednn_conv.cc`` calls the same bundled library (``mindspore/lib/libdnnl.so.3``) with "any" layouts,
so oneDNN picks its direct jit kernels for the forward and backward-data passes. Measured in
docs/PERFORMANCE.md ("oneDNN convolutions").

The kernel library is compiled once per source version with the machine's g++ into a cache folder
(``KITSEG_CACHE_DIR``, default ``~/.cache/kitseg``), written under a temporary name and renamed.
``availability()`` says whether it can be used here and why not; networks keep MindSpore's own
kernels unless ``use_onednn_convolutions`` switches them, so MindIR export and GPU/Ascend never see
these operators. ``KITSEG_ONEDNN_CONV=0`` turns the switch off.
"""
import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import mindspore as ms
from mindspore import nn, ops
from mindspore.ops.operations._grad_ops import Conv3DBackpropFilter

from src import cpu_env

SOURCE = Path(__file__).with_name("onednn_conv.cc")
ENV_SWITCH = "KITSEG_ONEDNN_CONV"
ENV_CACHE = "KITSEG_CACHE_DIR"
AOT_WHITE_LIST = "MS_CUSTOM_AOT_WHITE_LIST"
SUPPORTED_MAJOR = 3

_state = {}


class _Version(ctypes.Structure):
    _fields_ = [("major", ctypes.c_int), ("minor", ctypes.c_int), ("patch", ctypes.c_int),
                ("hash", ctypes.c_char_p), ("cpu_runtime", ctypes.c_uint), ("gpu_runtime", ctypes.c_uint)]


def bundled_onednn() -> Path:
    return Path(ms.__file__).parent / "lib" / "libdnnl.so.3"


def onednn_version(library: Path) -> tuple:
    handle = ctypes.CDLL(str(library))
    handle.dnnl_version.restype = ctypes.POINTER(_Version)
    version = handle.dnnl_version().contents
    return version.major, version.minor, version.patch


def switched_on() -> bool:
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "false", "off", "no")


def cache_dir() -> Path:
    return Path(os.environ.get(ENV_CACHE) or Path.home() / ".cache" / "kitseg").expanduser().resolve()


def build_library(out_dir: Path) -> Path:
    """Compile onednn_conv.cc against the bundled oneDNN (once per source and library); returns the .so."""
    library = bundled_onednn()
    if not library.is_file():
        raise RuntimeError(f"MindSpore's oneDNN library is missing ({library})")
    major = onednn_version(library)[0]
    if major != SUPPORTED_MAJOR:
        raise RuntimeError(f"the bundled oneDNN is version {major}.x; the kernels are written for 3.x")
    compiler = shutil.which(os.environ.get("CXX", "g++"))
    if compiler is None:
        raise RuntimeError("no C++ compiler (g++) on PATH")
    digest = hashlib.sha256(SOURCE.read_bytes() + str(library).encode()).hexdigest()[:16]
    target = out_dir / f"onednn_conv-{digest}.so"
    if target.is_file():
        return target
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(prefix=".onednn_conv-", suffix=".so", dir=out_dir)
    os.close(fd)
    command = [compiler, "-O2", "-std=c++17", "-shared", "-fPIC", str(SOURCE), "-o", partial,
               f"-L{library.parent}", "-l:libdnnl.so.3", f"-Wl,-rpath,{library.parent}", "-lpthread"]
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or ["no message"])[-1]
            raise RuntimeError(f"compiling {SOURCE.name} failed: {last}")
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return target


def availability() -> tuple:
    """(True, library path) when the oneDNN kernels can run in this process, else (False, reason)."""
    if "availability" not in _state:
        if not cpu_env.fast_path_enabled():
            _state["availability"] = (False, f"the CPU fast path is off ({cpu_env.FAST_PATH_ENV})")
        elif not switched_on():
            _state["availability"] = (False, f"switched off by {ENV_SWITCH}")
        elif ms.get_context("device_target") != "CPU":
            _state["availability"] = (False, "the device is not the CPU")
        else:
            try:
                path = build_library(cache_dir())
                _allow_aot_library(path.parent)
                _state["availability"] = (True, str(path))
            except (OSError, RuntimeError) as err:
                _state["availability"] = (False, str(err))
    return _state["availability"]


def _allow_aot_library(folder: Path) -> None:
    """MindSpore loads aot libraries only from folders named in MS_CUSTOM_AOT_WHITE_LIST."""
    current = os.environ.get(AOT_WHITE_LIST)
    if not current:
        os.environ[AOT_WHITE_LIST] = str(folder)
    elif str(folder) not in current.split(":"):
        os.environ[AOT_WHITE_LIST] = f"{current}:{folder}"


def _output_size(size, kernel, stride, padding, dilation):
    return (size + 2 * padding - (dilation * (kernel - 1) + 1)) // stride + 1


class OneDNNConv3d(nn.Cell):
    """The convolution of one ``nn.Conv3d`` (group 1, symmetric padding) through the oneDNN kernels,
    with gradients from the oneDNN backward-data kernel and MindSpore's weight gradient. No bias: the
    caller adds it."""

    def __init__(self, library: str, kernel_size, out_channels, stride, padding, dilation):
        super().__init__()
        stride, padding, dilation = tuple(stride), tuple(padding), tuple(dilation)
        # oneDNN counts dilation from 0 (no dilation)
        self.config = ms.Tensor(np.array([*stride, *padding, *(d - 1 for d in dilation)], dtype=np.int64))

        def out_shape(x, w, config):
            return [x[0], w[0]] + [_output_size(x[i + 2], w[i + 2], stride[i], padding[i], dilation[i])
                                   for i in range(3)]

        def same_as_x(x, w, dy, config):
            return x

        def first_dtype(*dtypes):
            return dtypes[0]

        self.backward_data = ops.Custom(f"{library}:ConvBackwardData", out_shape=same_as_x,
                                        out_dtype=first_dtype, func_type="aot")
        # MindSpore's own weight gradient: the same oneDNN GEMM kernel, faster under MindSpore's threading
        self.backward_weights = Conv3DBackpropFilter(out_channels, tuple(kernel_size), pad_mode="pad",
                                                     pad=tuple(p for p in padding for _ in range(2)),
                                                     stride=stride, dilation=dilation)
        self.forward = ops.Custom(f"{library}:ConvForward", out_shape=out_shape, out_dtype=first_dtype,
                                  func_type="aot")

    def construct(self, x, weight):
        return self.forward(x, weight, self.config)

    # A Cell-level gradient: ops.Custom(bprop=...) registers one bprop per kernel name, which every layer
    # would share.
    def bprop(self, x, weight, out, dout):
        return self.backward_data(x, weight, dout, self.config), self.backward_weights(x, dout, weight.shape)


def supports(conv: nn.Conv3d) -> bool:
    padding = conv.padding if isinstance(conv.padding, tuple) else (conv.padding,) * 6
    return (conv.group == 1 and conv.pad_mode == "pad" and conv.data_format == "NCDHW"
            and padding[0::2] == padding[1::2])


def use_onednn_convolutions(network: nn.Cell) -> int:
    """Switch every supported convolution of ``network`` (cells with ``use_onednn``) to the oneDNN
    kernels; returns how many were switched (0 when they are not available here)."""
    available, library = availability()
    if not available:
        return 0
    switched = 0
    for _, cell in network.cells_and_names():
        if hasattr(cell, "use_onednn") and supports(cell):
            cell.use_onednn(library)
            switched += 1
    return switched


def select_convolution_kernels(network: nn.Cell, amp_level: str = "O0") -> str:
    """Use the oneDNN kernels for ``network`` where they apply (CPU, float32); returns a line for the log."""
    if amp_level != "O0":
        return "convolutions: MindSpore kernels (mixed precision)"
    switched = use_onednn_convolutions(network)
    if switched:
        return f"convolutions: oneDNN blocked-layout kernels ({switched} layers)"
    return f"convolutions: MindSpore kernels ({availability()[1]})"
