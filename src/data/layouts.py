"""Dataset layouts: where the cases of an input are (KiTS19, KiTS21, MSD/nnU-Net, MOTS, a flat folder,
a single file, a DICOM series folder) and what their labels and tasks mean. Reading the images is
``io``'s business.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from src.data.io import ITK_SUFFIXES, NIFTI_SUFFIXES, is_itk_path
from src.errors import UserError
from src.files import file_digest, read_json

KITS_IMAGE = "imaging.nii.gz"
KITS19_LABEL = "segmentation.nii.gz"
KITS21_LABEL = "aggregated_MAJ_seg.nii.gz"
MOTS_INDEX = "mots.json"
MSD_INDEX = "dataset.json"
MSD_CHANNEL_SUFFIX = "_0000"

KITS19_LABELS = {"background": 0, "kidney": 1, "tumor": 2}
KITS21_LABELS = {"background": 0, "kidney": 1, "tumor": 2, "cyst": 3}
# DoDNet's partially labelled tasks all use 1 = organ, 2 = tumour (tasks without an organ label only 2).
MOTS_DEFAULT_LABELS = {"background": 0, "organ": 1, "tumor": 2}


@dataclass(frozen=True)
class CaseFiles:
    case_id: str
    image: Path
    label: Path | None
    task_id: int | None = None
    series: str | None = None  # DICOM: the SeriesInstanceUID read from the folder ``image``


def case_image_digest(case: CaseFiles) -> str:
    """sha256 of the case's input image: its file, or the files of its DICOM series."""
    if case.image.is_dir():
        from src.data.dicom_series import series_digest
        return series_digest(case.image, case.series)
    return file_digest(case.image)


def _is_nifti(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.name.endswith(NIFTI_SUFFIXES)


def _strip_nifti_suffix(name: str) -> str:
    for suffix in NIFTI_SUFFIXES + ITK_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _kits_case_folders(raw: Path) -> list[Path]:
    """Candidate KiTS case folders: RAW itself when it is one case (holds imaging.nii.gz), else the
    sub-folders of RAW or of the KiTS repository's RAW/data; empty when RAW is no KiTS folder."""
    if (raw / KITS_IMAGE).is_file():
        return [raw]
    for root in (raw, raw / "data"):
        if root.is_dir():
            folders = sorted(c for c in root.iterdir() if c.is_dir() and not c.name.startswith("."))
            if any((folder / KITS_IMAGE).exists() for folder in folders):
                return folders
    return []


def detect_layout(raw) -> str:
    """One of: single, mots, msd, kits21, kits19, flat, dicom."""
    raw = Path(raw)
    if not raw.exists():
        raise UserError(f"data path not found: {raw}")
    if raw.is_file():
        if not raw.name.endswith(NIFTI_SUFFIXES) and not is_itk_path(raw):
            from src.data.dicom_series import is_dicom_file
            hint = "; a DICOM series is given as its folder" if is_dicom_file(raw) else ""
            raise UserError(f"not a NIfTI (.nii, .nii.gz), NRRD (.nrrd) or MHA (.mha) file: {raw}{hint}")
        return "single"
    if (raw / MOTS_INDEX).exists():
        return "mots"
    if (raw / MSD_INDEX).exists() or (raw / "imagesTr").is_dir():
        return "msd"
    kits_folders = _kits_case_folders(raw)
    if kits_folders:
        return "kits21" if any((folder / KITS21_LABEL).exists() for folder in kits_folders) else "kits19"
    if any(_is_nifti(child) or (child.is_file() and is_itk_path(child)) for child in raw.iterdir()):
        return "flat"
    from src.data.dicom_series import holds_dicom
    if holds_dicom(raw):
        return "dicom"
    raise UserError(
        f"no cases found in {raw}: expected KiTS case folders (case_XXXXX/{KITS_IMAGE}), an MSD folder "
        f"({MSD_INDEX} + imagesTr/labelsTr), {MOTS_INDEX}, .nii.gz/.nrrd/.mha files or a DICOM series")


def _find_kits_cases(raw: Path, layout: str) -> list[CaseFiles]:
    cases = []
    for folder in _kits_case_folders(raw):
        image = folder / KITS_IMAGE
        labels = [folder / KITS21_LABEL, folder / KITS19_LABEL] if layout == "kits21" else [folder / KITS19_LABEL]
        label = next((p for p in labels if p.exists()), None)
        if not image.exists():
            if label is not None:
                raise UserError(f"case {folder.name}: {label.name} present but {image} is missing")
            continue
        cases.append(CaseFiles(folder.name, image, label))
    return cases


def _find_msd_cases(raw: Path) -> list[CaseFiles]:
    images_dir, labels_dir = raw / "imagesTr", raw / "labelsTr"
    if not images_dir.is_dir():
        raise UserError(f"MSD folder {raw} has no imagesTr/ folder")
    image_files = sorted(p for p in images_dir.iterdir() if _is_nifti(p))
    if not image_files:
        raise UserError(f"MSD folder {images_dir} holds no .nii.gz images")
    names = [_strip_nifti_suffix(p.name) for p in image_files]
    with_channel = all(re.search(r"_\d{4}$", n) for n in names) and any(n.endswith(MSD_CHANNEL_SUFFIX) for n in names)
    cases = []
    for path, name in zip(image_files, names):
        if with_channel:
            if not name.endswith(MSD_CHANNEL_SUFFIX):
                raise UserError(f"{path}: only single-channel CT is supported (found channel {name[-4:]})")
            name = name[: -len(MSD_CHANNEL_SUFFIX)]
        label = next((labels_dir / f"{name}{s}" for s in NIFTI_SUFFIXES if (labels_dir / f"{name}{s}").exists()),
                     None)
        if label is None:
            raise UserError(f"MSD case {name}: label {labels_dir / (name + '.nii.gz')} is missing")
        cases.append(CaseFiles(name, path, label))
    known = {c.case_id for c in cases}
    if labels_dir.is_dir():
        orphans = sorted(_strip_nifti_suffix(p.name) for p in labels_dir.iterdir()
                         if _is_nifti(p) and _strip_nifti_suffix(p.name) not in known)
        if orphans:
            raise UserError(f"MSD labels without an image in {images_dir}: {', '.join(orphans[:5])}")
    return cases


def _find_mots_cases(raw: Path) -> list[CaseFiles]:
    index = read_json(raw / MOTS_INDEX)
    if not isinstance(index, dict) or not isinstance(index.get("cases"), list):
        raise UserError(f"{raw / MOTS_INDEX} must hold a 'cases' list")
    cases = []
    for entry in index["cases"]:
        try:
            case_id, task_id = str(entry["case_id"]), int(entry["task_id"])
            image = raw / entry["image"]
            label = raw / entry["label"] if entry.get("label") else None
        except (KeyError, TypeError, ValueError) as err:
            raise UserError(f"{raw / MOTS_INDEX}: malformed case entry {entry!r} ({err})") from None
        if not image.exists():
            raise UserError(f"MOTS case {case_id}: image {image} is missing")
        if label is not None and not label.exists():
            raise UserError(f"MOTS case {case_id}: label {label} is missing")
        cases.append(CaseFiles(case_id, image, label, task_id))
    return cases


def _find_flat_cases(raw: Path) -> list[CaseFiles]:
    files = sorted(p for p in raw.iterdir() if _is_nifti(p) or (p.is_file() and is_itk_path(p)))
    names = [_strip_nifti_suffix(p.name) for p in files]
    # nnU-Net style inputs (<id>_0000.nii.gz) keep their case id without the channel suffix.
    if names and all(n.endswith(MSD_CHANNEL_SUFFIX) for n in names):
        names = [n[: -len(MSD_CHANNEL_SUFFIX)] for n in names]
    return [CaseFiles(name, path, None) for name, path in zip(names, files)]


def find_cases(raw, series: str | None = None) -> list[CaseFiles]:
    """All cases under ``raw`` (any supported layout, or one KiTS case folder or file), sorted by case id.
    A DICOM folder is one case, its series (``series`` when it holds several) checked from the headers."""
    raw = Path(raw)
    layout = detect_layout(raw)
    if series is not None and layout != "dicom":
        raise UserError(f"--series picks a series of a DICOM folder; {raw} is a {layout} input")
    if layout == "dicom":
        from src.data.dicom_series import find_series_case
        cases = [find_series_case(raw, series)]
    elif layout == "single":
        # KiTS names every image imaging.nii.gz: its case id is the case folder's name.
        case_id = raw.resolve().parent.name if raw.name == KITS_IMAGE else ""
        cases = [CaseFiles(case_id or _strip_nifti_suffix(raw.name), raw, None)]
    elif layout == "mots":
        cases = _find_mots_cases(raw)
    elif layout == "msd":
        cases = _find_msd_cases(raw)
    elif layout in ("kits19", "kits21"):
        cases = _find_kits_cases(raw, layout)
    else:
        cases = _find_flat_cases(raw)
    if not cases:
        raise UserError(f"no cases found in {raw} ({layout} layout)")
    ids = [c.case_id for c in cases]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise UserError(f"duplicate case ids in {raw}: {', '.join(duplicates[:5])}")
    return sorted(cases, key=lambda c: c.case_id)


def _msd_labels(raw: Path) -> dict[str, int]:
    index = read_json(raw / MSD_INDEX)
    labels = index.get("labels") if isinstance(index, dict) else None
    if not isinstance(labels, dict) or not labels:
        raise UserError(f"{raw / MSD_INDEX} has no 'labels' mapping")
    try:
        if all(str(k).lstrip("-").isdigit() for k in labels):  # MSD / nnU-Net v1: {"0": "background"}
            mapping = {str(name): int(value) for value, name in labels.items()}
        else:  # nnU-Net v2: {"background": 0}
            mapping = {str(name): int(value) for name, value in labels.items()}
    except (TypeError, ValueError):
        raise UserError(f"{raw / MSD_INDEX}: labels must map names to single integers "
                        f"(region-based labels are not supported)") from None
    return dict(sorted(mapping.items(), key=lambda item: item[1]))


def dataset_labels(raw) -> dict[str, int]:
    """Label name -> value for a labelled dataset folder."""
    raw = Path(raw)
    layout = detect_layout(raw)
    if layout == "kits19":
        return dict(KITS19_LABELS)
    if layout == "kits21":
        return dict(KITS21_LABELS)
    if layout == "msd":
        if not (raw / MSD_INDEX).exists():
            raise UserError(f"MSD folder {raw} has no {MSD_INDEX} describing its labels")
        return _msd_labels(raw)
    if layout == "mots":
        labels = read_json(raw / MOTS_INDEX).get("labels")
        if labels is None:
            return dict(MOTS_DEFAULT_LABELS)
        try:
            return {str(k): int(v) for k, v in labels.items()}
        except (AttributeError, TypeError, ValueError):
            raise UserError(f"{raw / MOTS_INDEX}: 'labels' must map names to integers") from None
    raise UserError(f"{raw} is an unlabelled {layout} input; labels are only known for KiTS, MSD and MOTS folders")


def dataset_tasks(raw) -> dict[int, str] | None:
    """MOTS task id -> task name (from mots.json); None for single-task layouts."""
    raw = Path(raw)
    if detect_layout(raw) != "mots":
        return None
    tasks = read_json(raw / MOTS_INDEX).get("tasks", {})
    try:
        return {int(k): str(v) for k, v in sorted(tasks.items(), key=lambda item: int(item[0]))}
    except (AttributeError, TypeError, ValueError):
        raise UserError(f"{raw / MOTS_INDEX}: 'tasks' must map task ids to names") from None
