"""nnU-Net v2's own predictor on one case, as a whole process: the reference of ``benchmarks.predict_case``.

Runs in the benchmark venv (torch + nnunetv2 from requirements-bench.txt), never in ours, and imports
nothing from this repository. ``benchmarks.predict_case --reference`` writes MODEL/plans.json and
MODEL/dataset.json (the same plan as ours, in nnU-Net's format) and then calls

    python benchmarks/predict_case_nnunet.py --model MODEL --make_checkpoint      # untimed set-up
    python benchmarks/predict_case_nnunet.py --model MODEL --input IMG --output DIR [--mirror] [--threads N]

The second is timed as a whole process. It runs ``nnUNetPredictor.predict_from_files_sequential`` (no
worker processes, as our predict.py) on CPU and prints one JSON line last: seconds per stage, measured by
wrapping the predictor's own steps (preprocessing ``run_case``, ``predict_logits_from_preprocessed_data``,
``export_prediction_from_logits``), plus the model load.
"""
import argparse
import json
import sys
import time
from pathlib import Path

START = time.perf_counter()


def build_network(model: Path):
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans = PlansManager(load_json(str(model / "plans.json")))
    dataset = load_json(str(model / "dataset.json"))
    configuration = plans.get_configuration("3d_fullres")
    heads = plans.get_label_manager(dataset).num_segmentation_heads
    return nnUNetTrainer.build_network_architecture(plans, configuration, 1, heads, enable_deep_supervision=False)


def make_checkpoint(model: Path) -> dict:
    import torch

    torch.manual_seed(0)
    network = build_network(model)
    fold = model / "fold_0"
    fold.mkdir(parents=True, exist_ok=True)
    torch.save({"network_weights": network.state_dict(), "trainer_name": "nnUNetTrainer",
                "init_args": {"configuration": "3d_fullres"}, "inference_allowed_mirroring_axes": (0, 1, 2)},
               str(fold / "checkpoint_final.pth"))
    return {"parameters": sum(p.numel() for p in network.parameters())}


def predict(model: Path, image: str, output: Path, mirror: bool, threads: int) -> dict:
    stages = {}

    def timed(name, function):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                stages[name] = stages.get(name, 0.0) + time.perf_counter() - start
        return wrapper

    imports = time.perf_counter()
    import torch
    from nnunetv2.inference import predict_from_raw_data as module
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor

    stages["imports"] = time.perf_counter() - imports
    torch.set_num_threads(threads)
    DefaultPreprocessor.run_case = timed("read + preprocess", DefaultPreprocessor.run_case)
    nnUNetPredictor.predict_logits_from_preprocessed_data = timed(
        "network (sliding window)", nnUNetPredictor.predict_logits_from_preprocessed_data)
    module.export_prediction_from_logits = timed("resample back + argmax + write", module.export_prediction_from_logits)
    load = time.perf_counter()
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=mirror,
                                perform_everything_on_device=False, device=torch.device("cpu"), verbose=False,
                                allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(model), use_folds=(0,), checkpoint_name="checkpoint_final.pth")
    stages["model load"] = time.perf_counter() - load
    output.mkdir(parents=True, exist_ok=True)
    predictor.predict_from_files_sequential([[image]], [str(output / "case")], save_probabilities=False,
                                            overwrite=True)
    return {"stages": {k: round(v, 3) for k, v in stages.items()},
            "seconds_in_process": round(time.perf_counter() - START, 3), "torch": torch.__version__,
            "threads": threads, "mirror": mirror}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--make_checkpoint", action="store_true")
    parser.add_argument("--input")
    parser.add_argument("--output")
    parser.add_argument("--mirror", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    model = Path(args.model)
    if args.make_checkpoint:
        result = make_checkpoint(model)
    else:
        if not args.input or not args.output:
            parser.error("--input and --output are needed to predict")
        result = predict(model, args.input, Path(args.output), args.mirror, args.threads)
    sys.stdout.flush()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
