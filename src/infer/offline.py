"""The Ascend 310 flow in three steps with files in between (MindSpore ModelZoo convention).

1. ``write_window_bins`` (preprocess.py): every sliding window of the fold's validation cases as raw
   float32 ``BINS/00_data/<case>_<i>.bin`` of shape (1, C, *patch), plus ``BINS/windows.json`` with
   each case's window layout. With ``tta_mirror`` every flip of a window is its own input:
   ``i = window_index * len(flips) + flip_index`` with the flips listed in windows.json (the
   identity first), so the 310 program stays a plain "one file in, one file out" loop.
2. The C++ program (ascend310_infer/src/main.cc) or ``run_mindir_on_bins`` (mindir_runner.py on
   CPU/GPU): ``RESULTS/<case>_<i>_0.bin`` = float32 logits (1, K, *patch) per input.
3. ``evaluate_offline`` (postprocess.py): the results are un-flipped, averaged over flips and
   stitched with the same Gaussian accumulation as the online path (``stitch_windows``), then go
   through the same restore/postprocess/score code as eval.py.
"""
from pathlib import Path

import numpy as np
from tqdm import tqdm

from src.files import atomic_write_bytes, atomic_write_json, check_output_dir, read_json
from src.errors import UserError
from src.data.preprocessed import fold_cases, fold_validation_cases, load_plan
from src.data.preprocessed_case import load_case
from src.infer.evaluate import evaluate_cases
from src.infer.mindir import load_mindir_graph, read_mindir_sidecar
from src.infer.predictor import softmax_inplace
from src.infer.sliding_window import (WindowLayout, flip_spatial, mean_over_mirrors, mirror_combinations,
                                      pad_to_patch, stitch_windows, window_layout)

DATA_DIR = "00_data"
WINDOWS_FILE = "windows.json"
FORMAT_VERSION = 1


def input_name(case_id: str, index: int) -> str:
    return f"{case_id}_{index}"


def result_file(result_dir, name: str) -> Path:
    """The C++ program's naming: output 0 of input ``<name>.bin`` is ``<name>_0.bin``."""
    return Path(result_dir) / f"{name}_0.bin"


def _write_array(path: Path, array: np.ndarray) -> None:
    atomic_write_bytes(path, np.ascontiguousarray(array, dtype=np.float32).tobytes())


def write_window_bins(cfg, pre_dir, fold, output_path, progress: bool = True) -> dict:
    """Step 1: write the fold's windows and ``windows.json``; returns the windows.json content."""
    plan = load_plan(pre_dir)
    case_ids = fold_validation_cases(pre_dir, fold)
    patch = plan.patch_size
    flips = mirror_combinations(cfg.tta_mirror)
    data_dir = check_output_dir(Path(output_path) / DATA_DIR, "--output")
    stale = list(data_dir.glob("*.bin"))
    if stale:
        raise UserError(f"{data_dir} already holds {len(stale)} .bin file(s); use an empty --output")
    window_index = {
        "format_version": FORMAT_VERSION,
        "fold": int(fold),
        "patch_size": patch,
        "num_channels": plan.num_channels,
        "num_classes": plan.num_classes,
        "input_shape": [1, plan.num_channels] + patch,
        "dtype": "float32",
        "step_size": float(cfg.step_size),
        "tta_mirror": bool(cfg.tta_mirror),
        "flips": [list(f) for f in flips],
        "naming": "<case>_<window_index * len(flips) + flip_index>.bin; result <name>_0.bin",
        "cases": {},
    }
    count = 0
    for case_id in tqdm(case_ids, desc="cases", unit="case", disable=not progress):
        data = load_case(pre_dir, case_id).data
        layout = window_layout(data.shape[1:], patch, cfg.step_size)
        padded, _ = pad_to_patch(data, patch)
        for w, start in enumerate(layout.starts):
            window = padded[(slice(None),) + layout.region(start)][None]
            for f, spatial_flip in enumerate(flips):
                name = input_name(case_id, w * len(flips) + f)
                _write_array(data_dir / f"{name}.bin", flip_spatial(window, spatial_flip))
                count += 1
        window_index["cases"][case_id] = {"layout": layout.to_json(), "inputs": len(layout.starts) * len(flips)}
    window_index["total_inputs"] = count
    atomic_write_json(Path(output_path) / WINDOWS_FILE, window_index)
    return window_index


def run_mindir_on_bins(mindir, input_dir, output_dir, device_target: str = "CPU", progress: bool = True) -> int:
    """Step 2 on CPU/GPU with the C++ program's file contract; returns the number of inputs run."""
    import mindspore as ms
    from src.runtime.device import setup_device

    input_dir, output_dir = Path(input_dir), Path(output_dir)
    shape = [int(s) for s in read_mindir_sidecar(mindir)["input_shape"]]
    if shape[0] != 1:
        raise UserError(f"{mindir} takes batches of {shape[0]}; the 310 flow feeds one window per file: "
                        f"export with --batch_size 1")
    inputs = sorted(p for p in input_dir.glob("*.bin")) if input_dir.is_dir() else []
    if not inputs:
        raise UserError(f"no .bin inputs in {input_dir}")
    if output_dir.resolve() == input_dir.resolve():
        raise UserError(f"--output {output_dir} is the --input folder; choose another folder for the results")
    check_output_dir(output_dir, "--output")
    setup_device(device_target, mode="graph")
    graph = load_mindir_graph(mindir)
    expected = int(np.prod(shape))
    for path in tqdm(inputs, desc="inputs", unit="bin", disable=not progress):
        window = np.fromfile(path, dtype=np.float32)
        if window.size != expected:
            raise UserError(f"{path} holds {window.size} float32 values, the model takes {shape}")
        logits = graph(ms.Tensor(window.reshape(shape))).asnumpy()
        _write_array(result_file(output_dir, path.stem), logits)
    return len(inputs)


def _read_result(result_dir, name: str, shape) -> np.ndarray:
    path = result_file(result_dir, name)
    if not path.is_file():
        raise UserError(f"result {path} is missing (was step 2 run on every input?)")
    values = np.fromfile(path, dtype=np.float32)
    if values.size != int(np.prod(shape)):
        raise UserError(f"result {path} holds {values.size} float32 values, expected {list(shape)}")
    return values.reshape(shape)


def stitched_logits(window_index: dict, case_id: str, result_dir, progress: bool = False) -> np.ndarray:
    """(K, *shape) logits of one case from its stored window results (mirrors averaged, Gaussian-weighted)."""
    layout = WindowLayout.from_json(window_index["cases"][case_id]["layout"])
    flips = [tuple(f) for f in window_index["flips"]]
    flip_index = {flip: i for i, flip in enumerate(flips)}
    result_shape = (1, int(window_index["num_classes"])) + layout.patch_size
    averaged = np.empty(result_shape, dtype=np.float32)

    def windows():
        for w, start in enumerate(layout.starts):
            mean_over_mirrors(
                lambda flip: _read_result(result_dir, input_name(case_id, w * len(flips) + flip_index[flip]),
                                          result_shape), flips, averaged)
            yield start, averaged[0]

    return stitch_windows(layout, int(window_index["num_classes"]), windows(), progress, case_id)


def evaluate_offline(cfg, pre_dir, fold, pre_path, result_path, out_dir, ref_dir=None, progress: bool = True) -> dict:
    """Step 3: stitch, restore, postprocess and score; the same outputs as eval.py."""
    plan = load_plan(pre_dir)
    window_index = read_json(Path(pre_path) / WINDOWS_FILE, "windows.json of step 1")
    if window_index.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{Path(pre_path) / WINDOWS_FILE} has format {window_index.get('format_version')}, "
                        f"expected {FORMAT_VERSION}")
    if plan.patch_size != window_index["patch_size"]:
        raise UserError(f"windows.json was written for patch {window_index['patch_size']}, "
                        f"plans.json has {plan.patch_size}")
    case_ids = fold_validation_cases(pre_dir, fold)
    missing = [c for c in case_ids if c not in window_index["cases"]]
    if missing:
        raise UserError(f"windows.json (fold {window_index.get('fold')}) lacks case(s) {', '.join(missing[:5])} "
                        f"of fold {fold}")
    if not Path(result_path).is_dir():
        raise UserError(f"result folder not found: {result_path}")

    def probabilities(case_id, data, props):
        return softmax_inplace(stitched_logits(window_index, case_id, result_path))

    run_record = {"fold": int(fold), "models": [], "tta_mirror": window_index["tta_mirror"],
                  "step_size": window_index["step_size"], "offline_results": str(result_path)}
    return evaluate_cases(case_ids, pre_dir, probabilities, out_dir, cfg.postprocess, [], plan.labels,
                          ref_dir=ref_dir, progress=progress, run_record=run_record,
                          training_case_ids=fold_cases(pre_dir, plan, fold)[0])
