"""MindIR (and AIR) model files: the sidecar export.py writes next to each, and the one loader of the graph.

The sidecar ``<name>.mindir.json`` carries what the graph cannot: the plan, the config, the input shape, the
fold's postprocessing decision, and the model file's sha256, which binds the sidecar to that very file.
The predictor (eval.py, predict.py) and the Ascend 310 flow's CPU/GPU runner both load models here.
"""
from pathlib import Path

from src.errors import UserError
from src.files import file_digest, read_json, read_json_if_valid

# export.py --file_format: the file suffix of each (AIR only on Ascend)
EXPORT_FORMATS = {"MINDIR": ".mindir", "AIR": ".air"}

SIDECAR_PRODUCER = "export.py"
SIDECAR_COMPLETE = "complete"
SIDECAR_KEYS = ("plan", "batch_size", "input_shape", "model_digest")


def mindir_sidecar(model_file) -> Path:
    """``<name>.mindir.json`` next to ``<name>.mindir`` (``<name>.air.json`` for AIR)."""
    path = Path(model_file)
    return path.with_name(path.name + ".json")


def read_own_sidecar(path):
    """The content of ``path`` if export.py wrote it, else None (missing, not JSON, someone else's)."""
    sidecar = read_json_if_valid(path)
    return sidecar if isinstance(sidecar, dict) and sidecar.get("producer") == SIDECAR_PRODUCER else None


def read_mindir_sidecar(model_file) -> dict:
    """The sidecar of a model file, refused unless it is complete and names this very file (its sha256)."""
    if not Path(model_file).is_file():
        raise UserError(f"MindIR file not found: {model_file}")
    path = mindir_sidecar(model_file)
    if not path.is_file():
        old_name = Path(model_file).with_suffix(".json")
        hint = f" (exports before the sidecar was bound to its model wrote {old_name.name}: export again)" \
            if old_name.is_file() else ""
        raise UserError(f"{path} not found: a model file needs the sidecar export.py writes next to it "
                        f"(plan, patch size, batch size, the model's sha256){hint}")
    sidecar = read_json(path, "MindIR sidecar")
    if not isinstance(sidecar, dict) or sidecar.get("producer") != SIDECAR_PRODUCER:
        raise UserError(f"{path} was not written by export.py")
    if sidecar.get("status") != SIDECAR_COMPLETE:
        raise UserError(f"{path} belongs to an export that did not finish; export the model again")
    for key in SIDECAR_KEYS:
        if key not in sidecar:
            raise UserError(f"{path} lacks '{key}'")
    if sidecar["model_digest"] != file_digest(model_file):
        raise UserError(f"{model_file} is not the model {path.name} was written for (sha256 differs); "
                        f"export the model again")
    return sidecar


def load_mindir_graph(model_file):
    """The model file as a ``GraphCell``; one line for a missing or damaged file. Read its sidecar first
    (``read_mindir_sidecar``), and call after ``setup_device``."""
    import mindspore as ms
    from mindspore import nn

    path = Path(model_file)
    if not path.is_file():
        raise UserError(f"MindIR file not found: {path}")
    try:
        graph = ms.load(str(path))
    except Exception as err:  # MindSpore raises RuntimeError/ValueError for damaged files
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"cannot load MindIR {path}: {reason}") from None
    return nn.GraphCell(graph)
