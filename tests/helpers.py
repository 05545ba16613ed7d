"""Load a top-level entry script (``predict``, ``eval.py``, ``ascend310_infer/mindir_runner.py``) as a module,
so tests call its ``main(argv)`` in-process instead of paying for a new interpreter and MindSpore import."""
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_script(name: str):
    path = ROOT / (name if name.endswith(".py") else f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"entry_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
