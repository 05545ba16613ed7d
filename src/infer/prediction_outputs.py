"""predict.py's output folder, case by case: what a run checks first, what it skips, redoes or refuses.

A case has four outputs: its labels (``<case>.nii.gz``, or the ``--output_format`` file of
``output_formats.py``), ``<case>_overlay.png``, ``<case>_report.html`` (report_page.py) and
``<case>_report.json``. The JSON report is the case's commit record. It is written last and records who
wrote it (``"producer": "predict.py"``), the run's identity (the sha256 of every model file and the
settings that change the labels, the output format among them), the input image's sha256 (a DICOM
series': over its files) and the label's, overlay's and page's sha256. ``save_case`` first replaces any
old report by an ``"status": "incomplete"`` one, then writes the label, the overlay, the page and the
complete report, each atomically: a run killed at any instant leaves every case complete-old, complete-new, or
incomplete by its report (and a label never sits next to a complete report it does not match).

Before any model loads, every case is classified (``classify_case``):

- ``new``: none of its three files exists -> predicted;
- ``incomplete``: an incomplete report of ours, or a complete one whose label or overlay is missing ->
  predicted again (no finished work is lost);
- ``complete``: a complete report of this identity and this input image, with the label and overlay
  it recorded -> skipped, as nnU-Net's ``--continue_prediction`` (the result would be the same);
- ``other``: a complete report of ours for another model, other settings or another image, or a label
  or overlay changed since -> replaced only with ``overwrite``;
- ``foreign``: files under our names without a report of ours -> replaced only with ``overwrite``.
"""
import json
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from src.config import Config
from src.data.layouts import CaseFiles, case_image_digest
from src.errors import UserError
from src.files import (atomic_write_json, atomic_write_text, check_not_input, check_output_dir, file_digest,
                       overlapping_inputs, read_json_if_valid)
from src.infer.output_formats import label_file_name, write_label
from src.infer.postprocess import postprocessing_candidates
from src.infer.stage_times import stage
from src.infer.mindir import mindir_sidecar

PRODUCER = "predict.py"
LOCATE_KEYS = ("locate", "locate_margin_mm", "locate_threshold", "locate_include", "locate_max_unsure",
               "locate_min_coverage")
DEFAULTS = Config()
COMPLETE, INCOMPLETE = "complete", "incomplete"
NEW, OTHER, FOREIGN = "new", "other", "foreign"
FAILURE_LOG = "failures.log"
FAILURE_LOG_HEADER = "predict.py: cases that failed in the last run, with their tracebacks"


@dataclass(frozen=True)
class CaseTargets:
    case_id: str
    label: Path
    report: Path
    overlay: Path
    page: Path

    def files(self) -> Tuple[Path, Path, Path, Path]:
        return self.label, self.report, self.overlay, self.page


def case_targets(output_dir, case_id: str, output_format: str = "nifti") -> CaseTargets:
    output_dir = Path(output_dir)
    return CaseTargets(case_id, output_dir / label_file_name(case_id, output_format),
                       output_dir / f"{case_id}_report.json", output_dir / f"{case_id}_overlay.png",
                       output_dir / f"{case_id}_report.html")


def _json_normalized(value):
    return json.loads(json.dumps(value))


def run_identity(cfg, model_paths: Sequence, output_format: str = "nifti") -> dict:
    """What makes two runs produce the same labels: the model files' sha256 (an ensemble in any order) and
    the settings that change the result, including the stored postprocessing decision ``auto`` would read.
    Reads only file bytes, so it is known before any model loads (and fails on a missing model file)."""
    settings = {"tta_mirror": bool(cfg.tta_mirror), "step_size": float(cfg.step_size),
                "postprocess": str(cfg.postprocess)}
    locate = {key: getattr(cfg, key) for key in LOCATE_KEYS}
    if locate != {key: getattr(DEFAULTS, key) for key in LOCATE_KEYS}:
        settings["locate"] = locate  # only when not the defaults, so that earlier runs keep their identity
    if output_format != "nifti":  # another file for the labels; NIfTI runs keep the identity they always had
        settings["output_format"] = output_format
    if cfg.postprocess == "auto":  # the decision files auto may read, a MindIR sidecar's exported one included
        decisions = list(postprocessing_candidates(model_paths)) + [mindir_sidecar(path) for path in model_paths]
        settings["postprocessing_files"] = sorted(file_digest(path) for path in decisions if path.is_file())
    return _json_normalized({"models": sorted(file_digest(path) for path in model_paths), "settings": settings})


def check_prediction_outputs(cases: Sequence[CaseFiles], output_dir, output_format: str = "nifti") -> List[CaseTargets]:
    """Everything about OUT that would fail or touch an input, found before any compute: OUT is an input
    file, the folder of an input image or label, or a file at all; OUT cannot be written; an output would
    replace an input file (a hard link too); a folder sits where an output file goes. Creates OUT; returns
    the cases' targets."""
    output_dir = Path(output_dir)
    inputs = [c.image for c in cases] + [c.label for c in cases if c.label is not None]
    check_not_input(output_dir, inputs, "--output")
    # outputs among the inputs would replace them, or be read as input images by the next run
    beside = next((source for source in inputs if source.resolve().parent == output_dir.resolve()), None)
    if beside is not None:
        raise UserError(f"--output {output_dir} is the folder of the input {beside}; choose another output folder")
    check_output_dir(output_dir, "--output", create=False)
    targets = [case_targets(output_dir, c.case_id, output_format) for c in cases]
    files = [path for t in targets for path in t.files()] + [output_dir / FAILURE_LOG]
    clashes = overlapping_inputs(files, inputs)
    if clashes:
        more = f" (and {len(clashes) - 1} more)" if len(clashes) > 1 else ""
        raise UserError(f"--output {output_dir}: writing {clashes[0]} would replace an input file{more}; "
                        f"choose another output folder")
    log = FailureLog(output_dir)
    if log.path.is_file() and not log.is_ours():
        raise UserError(f"{log.path} was not written by predict.py, which keeps its failures there; move it or "
                        f"choose another output folder")
    folders = [path for path in files if path.is_dir()]
    if folders:
        more = f" (and {len(folders) - 1} more)" if len(folders) > 1 else ""
        raise UserError(f"{folders[0]} is a folder where predict.py writes a file{more}")
    check_output_dir(output_dir, "--output")
    return targets


def read_our_report(path: Path) -> Optional[dict]:
    """The report at ``path`` if predict.py wrote it (None when missing, unreadable or someone else's)."""
    report = read_json_if_valid(path)
    if not isinstance(report, dict) or report.get("producer") != PRODUCER:
        return None
    return report


def _identity_difference(recorded, identity: dict) -> str:
    if not isinstance(recorded, dict) or recorded.get("models") != identity["models"]:
        return "predicted by another model"
    old, new = recorded.get("settings") or {}, identity["settings"]
    changed = sorted(key for key in set(old) | set(new) if old.get(key) != new.get(key))
    return f"predicted with other settings ({', '.join(changed)})"


def classify_case(targets: CaseTargets, case: CaseFiles, identity: dict) -> Tuple[str, str]:
    """(one of new/incomplete/complete/other/foreign, why) for one case; see the module docstring."""
    present = [path for path in targets.files() if path.exists()]
    if not present:
        return NEW, ""
    report = read_our_report(targets.report)
    if report is None:
        what = targets.report.name if targets.report in present else present[0].name
        return FOREIGN, f"{what} was not written by predict.py"
    if report.get("status") != COMPLETE:
        return INCOMPLETE, "left incomplete by an interrupted run"
    if report.get("identity") != identity:
        return OTHER, _identity_difference(report.get("identity"), identity)
    if report.get("image_digest") != case_image_digest(case):
        return OTHER, f"predicted from another version of {case.image}"
    for path, key in ((targets.label, "label_digest"), (targets.overlay, "overlay_digest"),
                      (targets.page, "page_digest")):
        if not path.is_file():
            return INCOMPLETE, f"{path.name} is missing"
        if file_digest(path) != report.get(key):
            return OTHER, f"{path.name} was changed after predict.py wrote it"
    return COMPLETE, ""


def plan_cases(cases: Sequence[CaseFiles], targets: Sequence[CaseTargets], identity: dict,
               overwrite: bool) -> Tuple[List[Tuple[CaseFiles, CaseTargets]], int]:
    """(the cases to predict, how many are skipped as complete); refuses outputs this run must not replace
    (another model's, changed ones, someone else's) unless ``overwrite``."""
    todo, skipped, refused = [], 0, []
    for case, target in zip(cases, targets):
        state, why = classify_case(target, case, identity)
        if state == COMPLETE:
            skipped += 1
        elif state in (OTHER, FOREIGN) and not overwrite:
            refused.append(f"{case.case_id}: {why}")
        else:
            todo.append((case, target))
    if refused:
        shown = "; ".join(refused[:3]) + (f"; and {len(refused) - 3} more" if len(refused) > 3 else "")
        raise UserError(f"{len(refused)} case(s) in {Path(targets[0].label).parent} hold outputs this run would "
                        f"replace ({shown}); pass --overwrite to replace them, or choose another output folder")
    return todo, skipped


def save_case(target: CaseTargets, case: CaseFiles, image, label, meta, labels: Dict[str, int], identity: dict,
              postprocessing: str, model: Optional[dict] = None) -> dict:
    """Write one case in the commit order of the module docstring; returns the complete report. ``model``:
    what the page lists about the model (``model_settings``)."""
    from src.infer.case_report import write_case_outputs

    record = {"producer": PRODUCER, "status": INCOMPLETE, "case_id": case.case_id, "identity": identity,
              "image_digest": case_image_digest(case)}
    # the old report goes first: from here until the new report lands, the case reads as incomplete
    atomic_write_json(target.report, record)
    model = model or {}
    with stage("write labels"):
        write_label(target.label, case, label, meta, labels, identity, model.get("network", "kitseg U-Net"))
    record.update(status=COMPLETE, label_digest=file_digest(target.label), postprocessing=postprocessing)
    settings = model_settings(model, identity, postprocessing, target.label.name)
    with stage("report + overlay + page"):
        return write_case_outputs(case.case_id, image, label, meta, labels, target.report, target.overlay,
                                  provenance=record, page_path=target.page, settings=settings)


def model_settings(model: dict, identity: dict, postprocessing: str, label_name: str) -> List[Tuple[str, str]]:
    """The page's "model and settings" lines: the model files (name, sha256), what the model is, and every
    setting that changes the labels."""
    lines = [("model file", name) for name in model.get("files", identity["models"])]
    lines += [(key, str(value)) for key, value in model.items() if key != "files"]
    lines += [(key, str(value)) for key, value in identity["settings"].items() if key != "postprocessing_files"]
    return lines + [("postprocessing applied", postprocessing), ("labels written to", label_name),
                    ("written by", "predict.py")]


def failure_reason(err: BaseException) -> str:
    """One line: a UserError's message as is; anything else with its type, so a bug stays recognisable."""
    if isinstance(err, UserError):
        return str(err)
    message = str(err).strip().splitlines()
    return f"{type(err).__name__}: {message[0]}" if message else type(err).__name__


class FailureLog:
    """``OUT/failures.log``: each failed case's reason and traceback, rewritten (atomically) after every
    failure so a killed run keeps it; a run without failures removes an old log of ours. One rank of a
    sharded run keeps its own log elsewhere (``path``); the merge writes ``OUT/failures.log`` from all."""

    def __init__(self, output_dir, path=None):
        self.path = Path(output_dir) / FAILURE_LOG if path is None else Path(path)
        self.entries: List[str] = []

    def add(self, case_id: str, err: BaseException) -> None:
        trace = "" if isinstance(err, UserError) else \
            "".join(traceback.format_exception(type(err), err, err.__traceback__))
        self.extend([f"== {case_id}: {failure_reason(err)}\n{trace}"])

    def extend(self, entries: Sequence[str]) -> None:
        """Append entries made by ``add`` (here or in another process) and rewrite the log."""
        self.entries.extend(entries)
        atomic_write_text(self.path, FAILURE_LOG_HEADER + "\n\n" + "\n".join(self.entries))

    def is_ours(self) -> bool:
        try:
            with open(self.path, errors="replace") as handle:
                return handle.readline().rstrip("\n") == FAILURE_LOG_HEADER
        except OSError:
            return False

    def clear_old(self) -> None:
        if self.is_ours():
            self.path.unlink()
