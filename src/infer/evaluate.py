"""Evaluate a fold end to end: preprocessed validation cases -> probabilities -> original geometry ->
postprocessing -> ``predictions/<case>.nii.gz`` -> KiTS scores (``metrics.csv``, ``summary.json``).

``evaluate_cases`` takes the probabilities from a callable so eval.py (a live predictor) and the
Ascend 310 postprocess.py (stitched offline results) share everything after the network.
Postprocessing with ``auto`` and no stored decision: the decision is made on these cases (as
nnU-Net decides on its cross-validation predictions), stored as ``postprocessing.json`` in the
output folder and next to a single model, applied, and the post-processed predictions are scored.

Sharded (``shard``: one msrun worker of ``scripts/run_distribute_eval.sh``): each rank predicts its
``cases_of_rank`` and writes their predictions (raw when the decision is still to be made) and rows to its
partial file; ``merge_evaluation`` then makes the decision on all the cases, or orders the rows, and writes
the same ``metrics.csv`` / ``summary.json`` / ``postprocessing.json`` a single process does.
"""
import time
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence

import numpy as np
from tqdm import tqdm

from src.data.io import ImageMeta, load_label

from src.data.layouts import find_cases
from src.files import (atomic_write_json, check_not_input, check_output_dir, overlapping_inputs, read_json,
                       remove_stale_temporaries)
from src.data.preprocessed import fold_cases, fold_validation_cases, load_plan
from src.data.preprocessed_case import load_case, load_case_properties
from src.errors import UserError
from src.infer.geometry import probabilities_to_original, save_prediction
from src.infer.postprocess import (POSTPROCESSING_FILE, apply_postprocessing, label_values, resolve_postprocessing,
                                   save_postprocessing, spec_summary)
from src.infer.postprocess_decision import component_floor_ml, decide_postprocessing
from src.metrics.kits import case_scores
from src.metrics.report import find_references, write_metrics_csv, write_summary_json
from src.msrun_env import Shard
from src.sharding import (cases_of_rank, gather_partials, remove_partials, rows_in_case_order, same_in_every_partial,
                          start_partial, write_partial)

ProbabilityFn = Callable[[str, np.ndarray, dict], np.ndarray]


def reference_label_paths(case_props: Dict[str, dict], ref_dir=None) -> Dict[str, Path]:
    """Case id -> raw reference label. From ``ref_dir`` (KiTS case folders or flat ``<case>.nii.gz``)
    when given; otherwise the dataset the case's raw image came from (``image_meta.source``)."""
    if ref_dir is not None:
        found = find_references(ref_dir)
        missing = [c for c in case_props if c not in found]
        if missing:
            raise UserError(f"no reference for case(s) {', '.join(missing[:5])} in {ref_dir}")
        return {c: found[c] for c in case_props}
    by_root: Dict[Path, dict] = {}
    paths = {}
    for case_id, props in case_props.items():
        stored = props.get("label_source")
        if stored:
            paths[case_id] = Path(stored)
            continue
        root = Path(props["image_meta"]["source"]).parent.parent
        if root not in by_root:
            try:
                by_root[root] = {c.case_id: c.label for c in find_cases(root)}
            except UserError as err:
                raise UserError(f"case {case_id}: cannot locate its reference label via the raw dataset {root} "
                                f"({err}); pass --ref REF_DIR") from None
        label = by_root[root].get(case_id)
        if label is None:
            raise UserError(f"case {case_id}: no reference label in the raw dataset {root}; pass --ref REF_DIR")
        paths[case_id] = Path(label)
    return paths


RESULT_FILES = ("summary.json", "metrics.csv", "eval_info.json")  # summary.json: the commit record, first here


def check_evaluation_output(out_dir, pre_dir, case_ids: Sequence[str], ref_dir=None, model_paths: Sequence = ()
                            ) -> Dict[str, Path]:
    """Refuse, before any model loads, an evaluation folder that cannot be written or would touch an input:
    EV (or EV/predictions) is the --data folder, the --ref folder or a folder holding references; an output
    would replace an input file; a folder sits where an output file goes. Creates EV/predictions; returns
    the cases' reference label paths."""
    out_dir = Path(out_dir)
    pred_dir = out_dir / "predictions"
    props = {case_id: load_case_properties(pre_dir, case_id) for case_id in case_ids}
    references = reference_label_paths(props, ref_dir)
    input_folders = {Path(pre_dir).resolve(): "the --data folder"}
    if ref_dir is not None:
        input_folders[Path(ref_dir).resolve()] = "the --ref folder"
    for reference in references.values():
        input_folders.setdefault(reference.resolve().parent, f"a folder of reference labels ({reference})")
    for folder in (out_dir, pred_dir):
        what = input_folders.get(folder.resolve())
        if what is not None:
            raise UserError(f"--output {out_dir}: {folder} is {what}; choose another output folder")
    inputs = list(references.values()) + [Path(p) for p in model_paths] + \
        [Path(pre_dir) / f"{case_id}{suffix}" for case_id in case_ids for suffix in (".npz", ".json")]
    check_not_input(out_dir, inputs, "--output")
    check_output_dir(out_dir, "--output", create=False)
    targets = [pred_dir / f"{case_id}.nii.gz" for case_id in case_ids] + \
        [out_dir / name for name in RESULT_FILES + (POSTPROCESSING_FILE,)]
    clashes = overlapping_inputs(targets, inputs)
    if clashes:
        raise UserError(f"--output {out_dir}: writing {clashes[0]} would replace an input file")
    folders = [path for path in targets if path.is_dir()]
    if folders:
        raise UserError(f"{folders[0]} is a folder where eval.py writes a file")
    check_output_dir(pred_dir, "--output predictions folder")
    return references


def start_results(out_dir, case_ids: Sequence[str]) -> None:
    """Before the first prediction is written: the old results go, summary.json first, so from here until
    the new summary.json lands the folder reads as unfinished; predictions of cases not evaluated now are
    removed so they can never be mixed with this run's; temporaries of killed runs too."""
    out_dir = Path(out_dir)
    for name in RESULT_FILES:
        (out_dir / name).unlink(missing_ok=True)
    evaluated = {f"{case_id}.nii.gz" for case_id in case_ids}
    for stale in (out_dir / "predictions").glob("*.nii.gz"):
        if stale.name not in evaluated:
            stale.unlink()
    remove_stale_temporaries(out_dir)
    remove_stale_temporaries(out_dir / "predictions")


def _score(case_id: str, label: np.ndarray, ref_path: Path, meta: ImageMeta) -> dict:
    reference = load_label(ref_path, like=meta)
    # plain floats: a sharded run carries the rows through JSON to the merge, which must average the same numbers
    return {"caseID": case_id, **{key: float(value) for key, value in case_scores(label, reference, meta.spacing).items()}}


def _predict_and_save(case_ids: Sequence[str], pre_dir, probabilities: ProbabilityFn, props: dict, metas: dict,
                      references: dict, pred_dir: Path, spec: Optional[dict], decide_later: bool,
                      progress: bool) -> list:
    """Per case: probabilities, back to the original geometry, ``predictions/<case>.nii.gz``. When the
    postprocessing is known it is applied first and the case scored (its row returned); when it is still to
    be decided (``decide_later``) the raw prediction is saved and nothing is scored yet."""
    rows = []
    for case_id in tqdm(case_ids, desc="cases", unit="case", disable=not progress):
        data = load_case(pre_dir, case_id).data
        probs = probabilities(case_id, data, props[case_id])
        del data
        label = probabilities_to_original(probs, props[case_id])
        del probs
        if not decide_later:
            label = apply_postprocessing(label, spec, metas[case_id].spacing)
            rows.append(_score(case_id, label, references[case_id], metas[case_id]))
        save_prediction(label, props[case_id], pred_dir / f"{case_id}.nii.gz")
    return rows


def _decide_apply_and_score(case_ids: Sequence[str], pre_dir, out_dir: Path, props: dict, metas: dict,
                            references: dict, foreground: Sequence[int], model_paths: Sequence,
                            training_case_ids: Sequence[str]):
    """``postprocess: auto`` without a stored decision, once every case's raw prediction is saved: decide on
    all of them (as nnU-Net decides on its whole cross-validation), store the decision, apply it to the saved
    predictions and score them. Returns (spec, where it came from, rows in ``case_ids`` order)."""
    pred_dir = out_dir / "predictions"
    floors = component_floor_ml((load_case(pre_dir, c).seg for c in training_case_ids),
                                load_plan(pre_dir).target_spacing, foreground)
    spec = decide_postprocessing(
        ((load_label(pred_dir / f"{c}.nii.gz", like=metas[c]), load_label(references[c], like=metas[c]),
          metas[c].spacing) for c in case_ids), foreground, floors)
    # bound to the model files by their sha256: a retrained checkpoint cannot inherit it
    save_postprocessing(spec, out_dir / POSTPROCESSING_FILE, models=model_paths)
    model_folders = {Path(p).resolve().parent for p in model_paths}
    if len(model_folders) == 1:
        save_postprocessing(spec, next(iter(model_folders)) / POSTPROCESSING_FILE, models=model_paths)
    rows = []
    for case_id in case_ids:
        raw = load_label(pred_dir / f"{case_id}.nii.gz", like=metas[case_id])
        label = apply_postprocessing(raw, spec, metas[case_id].spacing)
        if label is not raw:
            save_prediction(label, props[case_id], pred_dir / f"{case_id}.nii.gz")
        rows.append(_score(case_id, label, references[case_id], metas[case_id]))
    return spec, f"decided on these {len(case_ids)} cases", rows


def _write_results(out_dir: Path, rows: list, case_ids: Sequence[str], spec: Optional[dict], spec_source: str,
                   run_record: dict, seconds: float) -> dict:
    write_metrics_csv(rows, out_dir / "metrics.csv")
    atomic_write_json(out_dir / "eval_info.json", {
        **run_record,
        "cases": list(case_ids),
        "postprocessing": spec_summary(spec),
        "postprocessing_spec": spec,
        "postprocessing_source": spec_source,
        "seconds": round(seconds, 1),
    })
    # the commit record, last: present only beside the predictions, metrics and info of this run
    return write_summary_json(rows, out_dir / "summary.json")


def evaluate_cases(case_ids: Sequence[str], pre_dir, probabilities: ProbabilityFn, out_dir, postprocess: str,
                   model_paths: Sequence, labels: Dict[str, int], ref_dir=None, progress: bool = True,
                   run_record: Optional[dict] = None, exported_postprocessing: Optional[dict] = None,
                   training_case_ids: Sequence[str] = (), shard: Optional[Shard] = None) -> dict:
    """Predict, restore, postprocess, write and score ``case_ids``; returns the summary.

    A postprocessing decided here also weighs the minimum component volumes learnt from the
    references of ``training_case_ids`` (none given: that step is not a candidate).
    With ``shard`` (one rank of a sharded run) only that rank's ``cases_of_rank`` are predicted and
    written, its rows go to its partial file and the partial record is returned; ``merge_evaluation``
    then decides the postprocessing (if still to decide) and writes the results from all ranks."""
    out_dir = Path(out_dir)
    pred_dir = out_dir / "predictions"
    references = check_evaluation_output(out_dir, pre_dir, case_ids, ref_dir, model_paths)
    foreground = label_values(labels)
    props = {case_id: load_case_properties(pre_dir, case_id) for case_id in case_ids}
    spec, spec_source = resolve_postprocessing(postprocess, model_paths, foreground, exported_postprocessing)
    decide_here = postprocess == "auto" and spec is None
    metas = {case_id: ImageMeta.from_json(props[case_id]["image_meta"]) for case_id in case_ids}
    started = time.time()
    start_results(out_dir, case_ids)
    if shard is None:  # a single process owns the folder: shares a killed sharded run left are void now
        remove_partials(out_dir)
        mine = case_ids
    else:
        start_partial(out_dir, shard)
        mine = cases_of_rank(case_ids, shard)
    rows = _predict_and_save(mine, pre_dir, probabilities, props, metas, references, pred_dir, spec, decide_here,
                             progress)
    if shard is not None:
        # everything the merge needs, resolved, so it runs without the model or the command line
        context = {"pre_dir": str(Path(pre_dir).resolve()), "references": {c: str(p.resolve()) for c, p in
                                                                           references.items()},
                   "model_paths": [str(Path(p).resolve()) for p in model_paths], "foreground": foreground,
                   "decide_here": decide_here, "spec": spec, "spec_source": spec_source, "run_record": run_record or {},
                   "training_case_ids": list(training_case_ids)}
        path = write_partial(out_dir, shard, case_ids, {"rows": rows, "started": started, "context": context})
        return read_json(path, "partial result")
    if decide_here:
        spec, spec_source, rows = _decide_apply_and_score(case_ids, pre_dir, out_dir, props, metas, references,
                                                          foreground, model_paths, training_case_ids)
    return _write_results(out_dir, rows, case_ids, spec, spec_source, run_record or {}, time.time() - started)


def merge_evaluation(out_dir) -> dict:
    """After every rank of a sharded ``evaluate_cases`` finished: the results a single process writes, from
    the ranks' partial files (``gather_partials``) - with ``postprocess: auto`` and no stored decision, the
    decision over all the cases, its application and the scores; otherwise the ranks' rows in case order.
    Removes the partials after summary.json (the commit record) is written; returns the summary."""
    out_dir = Path(out_dir)
    partials = gather_partials(out_dir)
    case_ids = partials[0]["all_cases"]
    context = same_in_every_partial(partials, "context")
    started = min(float(partial["started"]) for partial in partials)
    run_record = dict(context["run_record"], shards=len(partials))
    if context["decide_here"]:
        pre_dir = Path(context["pre_dir"])
        props = {case_id: load_case_properties(pre_dir, case_id) for case_id in case_ids}
        metas = {case_id: ImageMeta.from_json(props[case_id]["image_meta"]) for case_id in case_ids}
        references = {case_id: Path(path) for case_id, path in context["references"].items()}
        spec, spec_source, rows = _decide_apply_and_score(case_ids, pre_dir, out_dir, props, metas, references,
                                                          context["foreground"], context["model_paths"],
                                                          context["training_case_ids"])
    else:
        spec, spec_source = context["spec"], context["spec_source"]
        rows = rows_in_case_order(partials, case_ids)
    summary = _write_results(out_dir, rows, case_ids, spec, spec_source, run_record, time.time() - started)
    remove_partials(out_dir)
    return summary


def evaluate_fold(cfg, pre_dir, fold, out_dir, ckpts=None, mindir=None, ref_dir=None, progress: bool = True,
                  shard: Optional[Shard] = None) -> dict:
    """eval.py with a model: the fold's validation cases through ``load_predictor`` (with ``shard``, this
    rank's share of them; see ``evaluate_cases``)."""
    from src.infer.predictor import load_predictor

    plan = load_plan(pre_dir)
    case_ids = fold_validation_cases(pre_dir, fold)
    model_paths = list(ckpts) if ckpts else [mindir] if mindir is not None else []
    check_evaluation_output(out_dir, pre_dir, case_ids, ref_dir, model_paths)
    predictor = load_predictor(cfg, ckpts=ckpts, mindir=mindir, plan=plan, progress=progress)

    def probabilities(case_id, data, props):
        return predictor.predict_preprocessed(data)

    run_record = {"fold": int(fold), "models": [str(p) for p in model_paths], "tta_mirror": cfg.tta_mirror,
            "step_size": cfg.step_size}
    return evaluate_cases(case_ids, pre_dir, probabilities, out_dir, cfg.postprocess, model_paths,
                          predictor.plan.labels, ref_dir=ref_dir, progress=progress, run_record=run_record,
                          exported_postprocessing=predictor.exported_postprocessing,
                          training_case_ids=fold_cases(pre_dir, plan, fold)[0], shard=shard)
