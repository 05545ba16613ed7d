"""Faster CPU kernels inside MindSpore graphs (``ops.Custom`` aot), compiled here from this folder's C++.

- ``conv.cc`` / ``conv.py``: 3D convolutions through the oneDNN library bundled with MindSpore
  (``mindspore/lib/libdnnl.so.3``) on channels-last activations, where oneDNN has its brgemm kernels;
  MindSpore's own Conv3d hands it plain NCDHW tensors, which leaves only im2col GEMM.
- ``instance_norm.cc`` / ``instance_norm.py``: instance norm + LeakyReLU fused, one kernel per direction
  (MindSpore runs GroupNorm and the activation as several passes each).

Measured in docs/PERFORMANCE.md ("Compiled CPU kernels"). The library is compiled once per source version with the
machine's g++ into a cache folder (``KITSEG_CACHE_DIR``, default ``~/.cache/kitseg``), under a temporary
name and then renamed. ``availability()`` says whether it can be used in this process and why not.
Networks keep MindSpore's kernels unless ``use_cpu_kernels`` switches them (cells with a
``use_cpu_kernel`` method), so exported MindIR and GPU/Ascend graphs never contain these operators.
``KITSEG_CPU_KERNELS=0`` (or the CPU fast path off) keeps MindSpore's kernels.
"""
import ctypes
import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import mindspore as ms
from mindspore import nn

from src import cpu_env
from src.files import atomic_produce

FOLDER = Path(__file__).parent
SOURCES = (FOLDER / "conv.cc", FOLDER / "instance_norm.cc")
HEADERS = (FOLDER / "parallel.h",)
ENV_SWITCH = "KITSEG_CPU_KERNELS"
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


def cache_dir() -> Path:
    return Path(os.environ.get(ENV_CACHE) or Path.home() / ".cache" / "kitseg").expanduser().resolve()


def build_library(out_dir: Path) -> Path:
    """Compile the kernels against the bundled oneDNN (once per source and library); returns the .so."""
    library = bundled_onednn()
    if not library.is_file():
        raise RuntimeError(f"MindSpore's oneDNN library is missing ({library})")
    major = onednn_version(library)[0]
    if major != SUPPORTED_MAJOR:
        raise RuntimeError(f"the bundled oneDNN is version {major}.x; the kernels are written for 3.x")
    compiler = shutil.which(os.environ.get("CXX", "g++"))
    if compiler is None:
        raise RuntimeError("no C++ compiler (g++) on PATH")
    content = b"".join(path.read_bytes() for path in SOURCES + HEADERS) + str(library).encode()
    target = out_dir / f"kitseg_cpu_kernels-{hashlib.sha256(content).hexdigest()[:16]}.so"
    if target.is_file():
        return target
    out_dir.mkdir(parents=True, exist_ok=True)

    def compile_to(partial):
        # -fopenmp-simd: honour the sources' "omp simd" loop hints (no OpenMP runtime is linked)
        command = [compiler, "-O3", "-fopenmp-simd", "-std=c++17", "-shared", "-fPIC", *map(str, SOURCES),
                   "-o", str(partial), f"-L{library.parent}", "-l:libdnnl.so.3", f"-Wl,-rpath,{library.parent}",
                   "-lpthread"]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or ["no message"])[-1]
            raise RuntimeError(f"compiling the CPU kernels failed: {last}")

    # processes compiling at once each write their own temporary; the last rename wins, with equal bytes
    atomic_produce(target, compile_to, suffix=".so")
    return target


def availability() -> tuple:
    """(True, library path) when the oneDNN kernels can run in this process, else (False, reason)."""
    if "availability" not in _state:
        if not cpu_env.fast_path_enabled():
            _state["availability"] = (False, f"the CPU fast path is off ({cpu_env.FAST_PATH_ENV})")
        elif not cpu_env.switch_on(ENV_SWITCH):
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


def use_cpu_kernels(network: nn.Cell) -> int:
    """Switch every cell of ``network`` that has a CPU kernel and supports it; returns how many were
    switched (0 when the kernels are not available here)."""
    available, library = availability()
    if not available:
        return 0
    return sum(bool(cell.use_cpu_kernel(library)) for _, cell in network.cells_and_names()
               if hasattr(cell, "use_cpu_kernel"))


def every_convolution_switchable(network: nn.Cell) -> bool:
    """True when every (transposed) convolution cell of ``network`` can run on the compiled kernels."""
    convolutions = [cell for _, cell in network.cells_and_names()
                    if isinstance(cell, (nn.Conv3d, nn.Conv3dTranspose))]
    return all(getattr(cell, "can_use_cpu_kernel", lambda: False)() for cell in convolutions)


@dataclass(frozen=True)
class KernelChoice:
    layers: int  # cells switched to compiled kernels
    line: str  # for the training log


def select_cpu_kernels(network: nn.Cell, amp_level: str = "O0", release_isa_cap: bool = False) -> KernelChoice:
    """Use the CPU kernels for ``network`` where they apply (float32).

    ``release_isa_cap``: the process runs nothing but this network (and others built the same way), so
    when every convolution is compiled, oneDNN's AVX2 cap is lifted first (``cpu_env.release_cap``)."""
    if amp_level != "O0":
        return KernelChoice(0, "CPU kernels: MindSpore's (mixed precision)")
    if not availability()[0]:
        return KernelChoice(0, f"CPU kernels: MindSpore's ({availability()[1]})")
    if release_isa_cap and every_convolution_switchable(network):
        cpu_env.release_cap()
    switched = use_cpu_kernels(network)
    isa = "oneDNN capped at AVX2" if cpu_env.isa_capped() else "oneDNN uncapped"
    return KernelChoice(switched, f"CPU kernels: compiled oneDNN convolutions and fused instance norm "
                                  f"({switched} layers, {isa})")
