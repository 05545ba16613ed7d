"""Where the time of one predicted case goes: wall seconds per stage, printed when asked.

``predict.py`` (``src.infer.predict_cases``) opens a record per case (``case_record``) and the code it runs
marks its stages with ``stage("name")``; outside a record ``stage`` costs one attribute lookup. With
``KITSEG_STAGE_TIMES=1`` in the environment each finished case prints one line on stderr,
``stage seconds <case>: {json}``, which ``benchmarks.predict_case`` reads; the same dict is logged at
debug level on the ``kitseg.predict`` logger either way. Stages nest (the locator's first pass runs inside
"network"), so a parent's figure includes its children's; ``exclusive`` subtracts them for a table.
"""
import json
import logging
import os
import sys
import time
from contextlib import contextmanager
from typing import Dict, List, Optional

ENV = "KITSEG_STAGE_TIMES"
LINE_PREFIX = "stage seconds "
LOGGER = logging.getLogger("kitseg.predict")


class StageRecord:
    """Seconds per stage name (summed when a stage runs more than once) and the nesting seen."""

    def __init__(self, name: str):
        self.name = name
        self.seconds: Dict[str, float] = {}
        self.parents: Dict[str, Optional[str]] = {}
        self._open: List[str] = []
        self.counts: Dict[str, int] = {}

    def add(self, name: str, seconds: float, parent: Optional[str]) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds
        self.parents.setdefault(name, parent)

    def count(self, name: str, value: int) -> None:
        """Numbers that explain a stage's time (windows run, windows skipped)."""
        self.counts[name] = self.counts.get(name, 0) + int(value)

    def exclusive(self) -> Dict[str, float]:
        """Each stage's seconds minus those of the stages nested in it."""
        own = dict(self.seconds)
        for name, parent in self.parents.items():
            if parent is not None and parent in own:
                own[parent] -= self.seconds[name]
        return {name: max(value, 0.0) for name, value in own.items()}

    def to_json(self) -> dict:
        return {"case": self.name, "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
                "parents": self.parents, "counts": self.counts}


_state = {"record": None}


@contextmanager
def case_record(name: str):
    """Collect the stages of one case; prints/logs the record when the block ends (also on errors)."""
    record = StageRecord(name)
    previous, _state["record"] = _state["record"], record
    try:
        yield record
    finally:
        _state["record"] = previous
        payload = json.dumps(record.to_json())
        LOGGER.debug("%s%s: %s", LINE_PREFIX, name, payload)
        if os.environ.get(ENV, "").strip().lower() in ("1", "true", "yes", "on"):
            print(f"{LINE_PREFIX}{name}: {payload}", file=sys.stderr, flush=True)


@contextmanager
def stage(name: str):
    """Time the block as stage ``name`` of the open case record (nothing when none is open)."""
    record = _state["record"]
    if record is None:
        yield
        return
    parent = record._open[-1] if record._open else None
    record._open.append(name)
    start = time.perf_counter()
    try:
        yield
    finally:
        record._open.pop()
        record.add(name, time.perf_counter() - start, parent)


def count(name: str, value: int) -> None:
    record = _state["record"]
    if record is not None:
        record.count(name, value)


def parse_lines(text: str) -> List[dict]:
    """The records printed in ``text`` (a predict.py stderr), in order."""
    records = []
    for line in text.splitlines():
        at = line.find(LINE_PREFIX)  # progress bars may share the line (carriage returns, no newline)
        if at >= 0 and ": {" in line[at:]:
            try:
                records.append(json.loads(line[at:].split(": ", 1)[1]))
            except ValueError:
                continue
    return records
