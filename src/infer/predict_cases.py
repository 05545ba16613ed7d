"""predict.py: raw NIfTI images in, label NIfTI files (input geometry), per-case reports and overlays out.

Order of a run: find the cases; check the output folder and every output file (``check_prediction_outputs``)
and decide per case what to skip, redo or refuse (``plan_cases``) - all before the model loads; remove
temporaries of killed runs; then per case: load, preprocess as for training (crop, normalize, resample to
the plan's spacing), sliding-window probabilities (mirroring and fold ensembling per the predictor), back
to the input geometry, postprocessing per the config, and ``save_case`` (label, overlay, report last).
A case that fails for any reason (a bad file, a ValueError, MemoryError, ...) is reported and the others
still finish; the run then ends with a UserError naming how many failed.

Sharded (one msrun worker of ``scripts/run_distribute_eval.sh``): the checks of the output folder cover every
case, the rest only this rank's ``cases_of_rank``; failed cases do not end the rank with an error (msrun
would kill the other ranks) but go to its partial file, and ``merge_predictions`` reports every rank's
failures and fails the run as a single process would.
"""
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from tqdm import tqdm

from src.data.io import load_image

from src.data.layouts import find_cases
from src.data.plan import Plan
from src.data.preprocess import preprocess_image_for_inference
from src.errors import UserError
from src.files import file_digest, remove_stale_temporaries
from src.infer.case_report import compact_ct, report_line
from src.infer.geometry import probabilities_to_original
from src.infer import stage_times
from src.infer.output_formats import check_output_format
from src.infer.postprocess import apply_postprocessing, label_values, resolve_postprocessing, spec_summary
from src.infer.prediction_outputs import (FAILURE_LOG, FailureLog, check_prediction_outputs, failure_reason,
                                          plan_cases, run_identity, save_case)
from src.msrun_env import Shard
from src.sharding import (cases_of_rank, gather_partials, remove_partials, same_in_every_partial, shards_dir,
                          start_partial, write_partial)


@dataclass
class PredictionRun:
    reports: List[dict] = field(default_factory=list)  # the cases predicted by this run
    skipped: int = 0  # complete outputs of this same model and settings, left as they were
    failures: Dict[str, str] = field(default_factory=dict)  # case id -> one-line reason


def load_model(cfg, ckpts, mindir, progress):
    """The predictor (a separate function so tests can tell whether a run got as far as loading it)."""
    from src.infer.predictor import load_predictor

    return load_predictor(cfg, ckpts=ckpts, mindir=mindir, progress=progress)


def predict_files(cfg, input_path, output_dir, ckpts: Optional[Sequence] = None, mindir=None,
                  overwrite: bool = False, progress: bool = True, shard: Optional[Shard] = None,
                  output_format: str = "nifti", series: Optional[str] = None) -> PredictionRun:
    """Predict every image under ``input_path`` (file or folder in any supported layout, a DICOM series
    folder: ``series`` picks one of several) into ``output_dir`` as ``output_format`` (with ``shard``, this
    rank's share of them). Raises UserError before any compute for an input or output problem or outputs it
    must not replace (see ``src.infer.prediction_outputs``), and after the loop if some cases failed (a shard
    records them in its partial file instead)."""
    if bool(ckpts) == (mindir is not None):
        raise UserError("give either checkpoint(s) or a MindIR file")
    cases = find_cases(input_path, series=series)
    check_output_format(cases, output_format)
    output_dir = Path(output_dir)
    targets = check_prediction_outputs(cases, output_dir, output_format)
    model_paths = list(ckpts) if ckpts else [mindir]
    identity = run_identity(cfg, model_paths, output_format)
    all_ids = [case.case_id for case in cases]
    if shard is not None:  # only this rank's cases are classified: reading another rank's outputs is its work
        mine = set(cases_of_rank(all_ids, shard))
        cases, targets = [c for c in cases if c.case_id in mine], [t for t in targets if t.case_id in mine]
    todo, skipped = plan_cases(cases, targets, identity, overwrite)
    remove_stale_temporaries(output_dir)
    run = PredictionRun(skipped=skipped)
    if shard is None:
        remove_partials(output_dir)  # a single process takes the folder over: a killed sharded run's shares are void
        log = FailureLog(output_dir)
    else:
        start_partial(output_dir, shard)
        log = FailureLog(output_dir, shards_dir(output_dir) / f"failures_rank_{shard.rank}.log")
    if skipped:
        print(f"skipped {skipped} of {len(cases)} case(s): already predicted in {output_dir} by this model "
              f"and settings", file=sys.stderr)
    if todo:
        _predict_todo(cfg, ckpts, mindir, progress, todo, model_paths, identity, run, log)
    if shard is not None:
        write_partial(output_dir, shard, all_ids, {
            "identity": identity, "predicted": [report["case_id"] for report in run.reports],
            "skipped": run.skipped, "failures": run.failures, "failure_log": log.entries})
        return run
    if run.failures:
        raise_failures(run.failures, len(cases), output_dir)
    log.clear_old()
    return run


def _predict_todo(cfg, ckpts, mindir, progress, todo, model_paths, identity, run: PredictionRun,
                  log: FailureLog) -> None:
    with stage_times.case_record("(model)"), stage_times.stage("model load"):
        predictor = load_model(cfg, ckpts, mindir, progress)
    spec, source = resolve_postprocessing(cfg.postprocess, model_paths, label_values(predictor.plan.labels),
                                          predictor.exported_postprocessing)
    print(f"{len(todo)} case(s) to predict; postprocessing: {spec_summary(spec)} ({source})", file=sys.stderr)
    model = model_description(predictor.plan, model_paths)
    for case, target in tqdm(todo, desc="cases", unit="case", disable=not progress):
        try:
            with stage_times.case_record(case.case_id):
                report = _predict_case(predictor, spec, case, target, identity, model)
        except Exception as err:  # noqa: BLE001  one bad case must not cost the others; it is named below
            run.failures[case.case_id] = failure_reason(err)
            log.add(case.case_id, err)
            tqdm.write(f"error: {case.case_id}: {run.failures[case.case_id]}", file=sys.stderr)
            continue
        run.reports.append(report)
        tqdm.write(report_line(report))


def model_description(plan: Plan, model_paths) -> dict:
    """What the case page says about the model: its files and what it was planned for."""
    return {"files": [f"{Path(path).name} ({file_digest(path)[:19]}...)" for path in model_paths],
            "network": f"kitseg U-Net, features {plan.features}",
            "trained for": f"{plan.get('dataset', '?')} labels {plan.labels}",
            "target spacing (mm)": " x ".join(f"{s:.3g}" for s in plan.target_spacing),
            "patch size": " x ".join(str(n) for n in plan.patch_size)}


def _predict_case(predictor, spec, case, target, identity, model: dict) -> dict:
    stage = stage_times.stage
    with stage("read"):
        image, meta = load_image(case.image, case.series)
    with stage("resample in"):
        data, props = preprocess_image_for_inference(image, meta, predictor.plan)
        image = compact_ct(image)  # kept for the report until the case ends
    with stage("network"):
        probs = predictor.predict_preprocessed(data)
    del data
    with stage("back to original + argmax"):
        label = probabilities_to_original(probs, props)
    del probs
    with stage("postprocess"):
        label = apply_postprocessing(label, spec, meta.spacing, copy=False)
    return save_case(target, case, image, label, meta, predictor.plan.labels, identity, spec_summary(spec), model)


def raise_failures(failures: Dict[str, str], total: int, output_dir: Path) -> None:
    for case_id, reason in sorted(failures.items()):
        print(f"failed: {case_id}: {reason}", file=sys.stderr)
    raise UserError(f"{len(failures)} of {total} case(s) failed (listed above; details in "
                    f"{output_dir / FAILURE_LOG}); the others are in {output_dir}")


def merge_predictions(output_dir) -> Tuple[int, int]:
    """After every rank of a sharded ``predict_files`` finished: (cases predicted, complete cases skipped) over
    all ranks. Every rank's failures go to ``OUT/failures.log`` and end the run with the single-process
    error; without failures an old log of ours is removed. The partials are removed either way."""
    output_dir = Path(output_dir)
    partials = gather_partials(output_dir)
    same_in_every_partial(partials, "identity")
    failures = {case_id: reason for partial in partials for case_id, reason in partial["failures"].items()}
    log = FailureLog(output_dir)
    if failures:
        log.extend([entry for partial in partials for entry in partial["failure_log"]])
    else:
        log.clear_old()
    remove_partials(output_dir)
    if failures:
        raise_failures(failures, len(partials[0]["all_cases"]), output_dir)
    return sum(len(partial["predicted"]) for partial in partials), sum(partial["skipped"] for partial in partials)
