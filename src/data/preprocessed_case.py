"""One preprocessed case as ``prepare.py preprocess`` writes it: ``<case>.npz`` (``data`` float32 (C, d0, d1, d2),
``seg`` int8, ``fg_<label>`` foreground coordinates, ``plan_id``) and ``<case>.json`` (its properties:
original geometry, crop box, ``plan_id``). Training, evaluation and the Ascend 310 flow all read cases here.

``np.load`` cannot memory-map an npz, but np.savez stores its members uncompressed, so ``load_case`` maps
those bytes directly: a worker reads only the voxels of its patch, and nothing is unpacked or duplicated
on disk (nnU-Net instead unpacks every case to .npy).
"""
from __future__ import annotations

import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from src.errors import UserError
from src.files import read_json


@dataclass
class PreprocessedCase:
    case_id: str
    data: np.ndarray  # (C, z, y, x) float32, memory-mapped when the npz is uncompressed
    seg: np.ndarray  # (z, y, x) int8
    fg_locations: dict  # label -> (N, 3) int voxel coordinates

    @property
    def shape(self):
        return self.seg.shape


def _stored_member_offsets(path: Path) -> dict:
    """name -> byte offset of each uncompressed member's .npy bytes inside the zip (np.savez writes those)."""
    offsets = {}
    with zipfile.ZipFile(path) as archive, open(path, "rb") as handle:
        for info in archive.infolist():
            if info.compress_type != zipfile.ZIP_STORED or not info.filename.endswith(".npy"):
                continue
            handle.seek(info.header_offset)
            local_header = handle.read(30)
            if local_header[:4] != b"PK\x03\x04":
                raise zipfile.BadZipFile(f"bad local header for {info.filename}")
            name_length, extra_length = struct.unpack("<HH", local_header[26:30])
            offsets[info.filename[:-4]] = info.header_offset + 30 + name_length + extra_length
    return offsets


def _map_members(path: Path, offsets: dict) -> dict:
    """Arrays viewing one read-only map of the file (one file descriptor per case, no copy)."""
    mapped = np.memmap(path, dtype=np.uint8, mode="r")
    arrays = {}
    with open(path, "rb") as handle:
        for name, start in offsets.items():
            handle.seek(start)
            version = np.lib.format.read_magic(handle)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran_order, dtype = read_header(handle)
            if dtype.hasobject:
                raise ValueError(f"member {name} holds Python objects")
            arrays[name] = np.ndarray(shape, dtype=dtype, buffer=mapped, offset=handle.tell(),
                                      order="F" if fortran_order else "C")
    return arrays


def _read_members(path: Path) -> dict:
    with np.load(path) as archive:
        return {name: archive[name] for name in archive.files}


PLAN_ID_MEMBER = "plan_id"


def plan_id_array(plan_id: str) -> np.ndarray:
    """How a case's npz stores the identity of its plan (bytes, so no pickled or unicode member)."""
    return np.frombuffer(plan_id.encode("ascii"), dtype=np.uint8)


def load_case_properties(pre_dir, case_id: str, hint: str = "") -> dict:
    """``<case>.json``: what writing the prediction back needs (original spacing and shape, crop box,
    ``image_meta``) and the ``plan_id`` the case was written for."""
    return read_json(Path(pre_dir) / f"{case_id}.json", f"case file of {case_id}", hint)


def load_case(pre_dir, case_id: str, plan_id: str | None = None) -> PreprocessedCase:
    """Open ``<case>.npz``; its members are memory-mapped when stored uncompressed (as np.savez writes),
    so a patch reads only its own voxels; a compressed npz is read whole.

    With ``plan_id`` (``Plan.identity`` of the plan in use) a case written for another plan
    is refused: a preprocessing run may replace the folder's cases while a long training reads them."""
    path = Path(pre_dir) / f"{case_id}.npz"
    if not path.is_file():
        raise UserError(f"preprocessed case not found: {path}")
    try:
        offsets = _stored_member_offsets(path)
        wanted = {"data", "seg"}
        arrays = _map_members(path, offsets) if wanted <= set(offsets) else _read_members(path)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise UserError(f"preprocessed case {path} cannot be read: {err}") from None
    if "data" not in arrays or "seg" not in arrays:
        raise UserError(f"preprocessed case {path} lacks the 'data' or 'seg' array")
    if plan_id is not None:
        stored = arrays.get(PLAN_ID_MEMBER)
        stored = None if stored is None else bytes(np.asarray(stored, dtype=np.uint8)).decode("ascii", "replace")
        if stored != plan_id:
            raise UserError(f"preprocessed case {path} was written for plan {stored}, not for the plan in use "
                            f"{plan_id}: run prepare.py preprocess again (did a preprocessing run replace it?)")
    data, seg = arrays["data"], arrays["seg"]
    fg = {int(name[3:]): arrays[name] for name in arrays if name.startswith("fg_") and name[3:].isdigit()}
    if data.ndim != 4 or seg.ndim != 3 or data.shape[1:] != seg.shape or data.dtype != np.float32:
        raise UserError(f"preprocessed case {path}: data {data.dtype}{data.shape} and seg {seg.shape} do not "
                        "match (expected float32 (C,z,y,x) and (z,y,x))")
    for label, coords in fg.items():
        if coords.size and (coords.ndim != 2 or coords.shape[1] != 3):
            raise UserError(f"preprocessed case {path}: fg_{label} must hold (N, 3) coordinates")
    return PreprocessedCase(case_id, data, seg, fg)
