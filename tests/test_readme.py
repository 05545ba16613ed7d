"""The README's commands are the scripts' real arguments: every command is parsed by its script's own
parser, and the Quick start block is run for real on tiny synthetic data."""
import importlib.util
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def bash_blocks(text):
    """(heading, [command lines]) for every ```bash block, in order."""
    blocks, heading = [], ""
    for part in re.split(r"(^```bash\n.*?^```$)", text, flags=re.S | re.M):
        if part.startswith("```bash"):
            lines = [line.strip() for line in part.splitlines()[1:-1]]
            blocks.append((heading, [line for line in lines if line and not line.startswith("#")]))
        else:
            titles = re.findall(r"^#+ (.+)$", part, flags=re.M)
            heading = titles[-1] if titles else heading
    return blocks


def all_commands():
    return [(heading, line) for heading, lines in bash_blocks(README) for line in lines]


def _parse_with_script(script: Path, argv):
    """Parse argv with the script's own parser (``build_parser()`` or, for benchmarks, ``parse_args``)."""
    spec = importlib.util.spec_from_file_location(f"readme_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if hasattr(module, "build_parser"):
        return module.build_parser().parse_args(argv)
    return module.parse_args(argv)


def test_readme_opens_with_demo_and_test():
    first_block = bash_blocks(README)[0][1]
    assert first_block[0].startswith("make demo") and first_block[1].startswith("make test")


@pytest.mark.parametrize("heading, line", all_commands(), ids=lambda v: v[:70] if isinstance(v, str) else None)
def test_every_readme_command_matches_its_script(heading, line):
    command = line.split("  #")[0]
    words = shlex.split(command)
    while re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]):  # environment variables set for the command
        words = words[1:]
    if words[0] == "make":
        targets = re.findall(r"^([a-z-]+):", (ROOT / "Makefile").read_text(), flags=re.M)
        assert words[1] in targets
        return
    if words[0] == "bash":
        script = ROOT / words[1]
        assert script.is_file(), f"{words[1]} does not exist"
        assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
        if script.name != "run_distribute_eval.sh":
            return
        words = ["python"] + words[3:]  # WORKERS SCRIPT <the script's arguments>: parsed as the script's
    assert words[0] == "python", f"unexpected command in README: {line}"
    if words[1] == "-m":
        script, argv = ROOT / (words[2].replace(".", "/") + ".py"), words[3:]
    else:
        script, argv = ROOT / words[1], words[2:]
    assert script.is_file(), f"{script} does not exist"
    try:
        _parse_with_script(script, argv)
    except SystemExit as exc:  # argparse rejects the README's flags
        pytest.fail(f"README command rejected by {script.name}: {line} (exit {exc.code})")


def test_readme_config_table_lists_every_config_key():
    from src.config import Config
    import dataclasses

    table = README.split("## Script description and parameters")[1].split("## Training")[0]
    documented = set(re.findall(r"`([a-z_0-9]+)`", table))
    missing = [f.name for f in dataclasses.fields(Config) if f.name != "name" and f.name not in documented]
    assert not missing, f"config keys missing from the README table: {missing}"


def test_quick_start_runs_as_written(tmp_path):
    """The Quick start block, verbatim except for the interpreter and absolute script/config paths."""
    (heading, lines), = [block for block in bash_blocks(README) if block[0] == "Quick start"]
    assert len(lines) == 9
    for line in lines:
        words = shlex.split(line)
        assert words[0] == "python"
        argv = [sys.executable, str(ROOT / words[1])]
        argv += [str(ROOT / w) if w.startswith("config/") else w for w in words[2:]]
        result = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, f"{line}\n{result.stderr[-3000:]}"
    assert (tmp_path / "work/eval/summary.json").is_file()
    assert (tmp_path / "work/eval/metrics.csv").is_file()
    assert (tmp_path / "work/unet.mindir").is_file()
    assert list((tmp_path / "work/predict").glob("*.nii.gz"))
    assert len(list((tmp_path / "work/test_pred").glob("*.nii.gz"))) == 2
    assert (tmp_path / "work/test_metrics.csv").read_text().count("case_") == 2
