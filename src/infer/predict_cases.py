"""predict.py: raw NIfTI images in, label NIfTI files (input geometry), per-case reports and overlays out.

Each case: load, preprocess as for training (crop, normalize, resample to the plan's spacing),
sliding-window probabilities (mirroring and fold ensembling per the predictor), back to the input
geometry, postprocessing per the config, then ``<case>.nii.gz``, ``<case>_report.json`` and
``<case>_overlay.png``. A broken input is reported and skipped; the others still finish.
"""
import sys
from pathlib import Path
from typing import List, Optional, Sequence

from tqdm import tqdm

from src.data.io import find_cases, load_image, save_label
from src.data.preprocess import preprocess_image_for_inference
from src.errors import UserError
from src.infer.case_report import report_line, write_case_outputs
from src.infer.geometry import probabilities_to_original
from src.infer.postprocess import apply_postprocessing, label_values, resolve_postprocessing, spec_summary


def predict_files(cfg, input_path, output_dir, ckpts: Optional[Sequence] = None, mindir=None,
                  progress: bool = True) -> List[dict]:
    """Predict every image under ``input_path`` (file or folder in any supported layout); returns the
    per-case reports. Raises UserError after the loop if some cases failed."""
    from src.infer.predictor import load_predictor

    cases = find_cases(input_path)
    output_dir = Path(output_dir)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create output folder {output_dir}: {err}") from None
    predictor = load_predictor(cfg, ckpts=ckpts, mindir=mindir, progress=progress)
    model_paths = list(ckpts) if ckpts else [mindir]
    spec, source = resolve_postprocessing(cfg.postprocess, model_paths, label_values(predictor.labels),
                                          predictor.exported_postprocessing)
    print(f"{len(cases)} case(s); postprocessing: {spec_summary(spec)} ({source})", file=sys.stderr)
    reports, failures = [], {}
    for case in tqdm(cases, desc="cases", unit="case", disable=not progress):
        try:
            image, meta = load_image(case.image)
            data, props = preprocess_image_for_inference(image, meta, predictor.plan)
            probs = predictor.predict_preprocessed(data)
            del data
            label = apply_postprocessing(probabilities_to_original(probs, props), spec, meta.spacing)
            del probs
            save_label(label, meta, output_dir / f"{case.case_id}.nii.gz")
            report = write_case_outputs(case.case_id, image, label, meta, predictor.labels,
                                        output_dir / f"{case.case_id}_report.json",
                                        output_dir / f"{case.case_id}_overlay.png")
        except UserError as err:
            failures[case.case_id] = str(err)
            tqdm.write(f"error: {case.case_id}: {err}", file=sys.stderr)
            continue
        reports.append(report)
        tqdm.write(report_line(report))
    if failures:
        shown = ", ".join(sorted(failures)[:5]) + (" ..." if len(failures) > 5 else "")
        raise UserError(f"{len(failures)} of {len(cases)} case(s) failed ({shown}); the others are in {output_dir}")
    return reports
