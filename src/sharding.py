"""Sharded inference under msrun: which cases a process takes, and gathering every process's share again.

``scripts/run_distribute_eval.sh WORKERS eval.py|predict.py ...`` starts the script under ``msrun`` (no
communication group: inference needs none; each worker's rank and world come from the environment, see
``src.msrun_env``) and, once every worker has exited cleanly, runs the same command once more with
``--merge_shards``.

- ``cases_of_rank`` is the one rule for "which cases are mine": over the sorted case ids, case i goes to
  rank ``i % world``.
- Each rank writes its results in ``OUT/shards/rank_<r>.json`` (``write_partial``), atomically and as its
  last step; it removes its own old partial first, so a partial present after a clean msrun is this run's.
  The launcher exports ``SHARDED_RUN_ID`` to every rank and to the merge, which accepts only partials of
  that run (a rank of an older run cannot be mixed in).
- ``gather_partials`` is the one place the shares come together: every rank 0..world-1 present, complete,
  of one run and one world, and each holding exactly its ``cases_of_rank``. The callers (eval's and
  predict's merge) write the final outputs from them and then ``remove_partials``.

No MindSpore and no inference code here, so both scripts can decide their role before anything heavy loads.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, List, Sequence

from src.errors import UserError
from src.files import atomic_write_json, remove_stale_temporaries
from src.msrun_env import Shard

SHARDS_DIR = "shards"
RUN_ID_VARIABLE = "SHARDED_RUN_ID"
MERGE_HINT = "rerun scripts/run_distribute_eval.sh"


def cases_of_rank(case_ids: Sequence[str], shard: Shard) -> List[str]:
    """The cases ``shard`` processes: over the sorted ids, case i belongs to rank ``i % world``."""
    return sorted(case_ids)[shard.rank::shard.world]


def shards_dir(out_dir) -> Path:
    return Path(out_dir) / SHARDS_DIR


def partial_path(out_dir, rank: int) -> Path:
    return shards_dir(out_dir) / f"rank_{rank}.json"


def start_partial(out_dir, shard: Shard) -> None:
    """Before a rank works: its old partial goes, so the partial a clean run leaves is always this run's."""
    shards_dir(out_dir).mkdir(parents=True, exist_ok=True)
    partial_path(out_dir, shard.rank).unlink(missing_ok=True)


def write_partial(out_dir, shard: Shard, all_cases: Sequence[str], content: dict, environ=None) -> Path:
    """A rank's commit record: the run's cases (in the order a single process takes them), this rank's share
    of them, and what the merge needs (``content``, JSON-able)."""
    env = os.environ if environ is None else environ
    record = {"rank": shard.rank, "world": shard.world, "run_id": env.get(RUN_ID_VARIABLE), "status": "complete",
              "all_cases": list(all_cases), "cases": cases_of_rank(all_cases, shard), **content}
    path = partial_path(out_dir, shard.rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, record)
    return path


def _read_partial(path: Path) -> dict:
    try:
        partial = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path} is missing: that rank did not finish its share; {MERGE_HINT}") from None
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read the partial result {path}: {err}; {MERGE_HINT}") from None
    if not isinstance(partial, dict) or partial.get("status") != "complete" or \
            not isinstance(partial.get("world"), int) or not isinstance(partial.get("cases"), list) or \
            not isinstance(partial.get("all_cases"), list):
        raise UserError(f"{path} is not a complete partial result; {MERGE_HINT}")
    return partial


def gather_partials(out_dir, environ=None) -> List[dict]:
    """Every rank's partial, by rank, checked to form one run: ranks 0..world-1 all present and complete,
    one world size, run id (the launcher's ``SHARDED_RUN_ID`` when set) and case list, each rank holding
    exactly its ``cases_of_rank``."""
    env = os.environ if environ is None else environ
    folder = shards_dir(out_dir)
    if not folder.is_dir():
        raise UserError(f"no sharded results in {out_dir} (no {SHARDS_DIR}/ folder); run the sharded command first")
    first = _read_partial(partial_path(out_dir, 0))
    world = first["world"]
    partials = [first] + [_read_partial(partial_path(out_dir, rank)) for rank in range(1, world)]
    run_id = env.get(RUN_ID_VARIABLE) or first.get("run_id")
    for rank, partial in enumerate(partials):
        where = partial_path(out_dir, rank)
        if partial.get("rank") != rank or partial["world"] != world:
            raise UserError(f"{where} belongs to rank {partial.get('rank')} of {partial['world']}, not rank {rank} "
                            f"of {world}; {MERGE_HINT}")
        if partial.get("run_id") != run_id:
            raise UserError(f"{where} was written by another sharded run than rank 0's; {MERGE_HINT}")
    all_cases = same_in_every_partial(partials, "all_cases")
    for rank, partial in enumerate(partials):
        if partial["cases"] != cases_of_rank(all_cases, Shard(rank, world)):
            raise UserError(f"{partial_path(out_dir, rank)} does not hold rank {rank}'s share of the cases; "
                            f"{MERGE_HINT}")
    return partials


def same_in_every_partial(partials: Sequence[dict], key: str):
    """``partial[key]``, which every rank must have recorded alike (the run's settings and case list)."""
    value = partials[0].get(key)
    for partial in partials[1:]:
        if partial.get(key) != value:
            raise UserError(f"the ranks of this sharded run disagree on {key!r} (rank 0 and rank {partial['rank']}); "
                            f"{MERGE_HINT}")
    return value


def rows_in_case_order(partials: Sequence[dict], case_ids: Sequence[str], key: str = "rows") -> List[dict]:
    """Every rank's per-case rows (each with a ``caseID``), ordered as ``case_ids``, each case exactly once."""
    by_case: Dict[str, dict] = {}
    for partial in partials:
        for row in partial.get(key, []):
            if row["caseID"] in by_case:
                raise UserError(f"case {row['caseID']} was scored by two ranks; {MERGE_HINT}")
            by_case[row["caseID"]] = row
    missing = [case_id for case_id in case_ids if case_id not in by_case]
    if missing or len(by_case) != len(case_ids):
        raise UserError(f"the ranks' rows do not cover the cases (missing {', '.join(missing[:5]) or 'none'}); "
                        f"{MERGE_HINT}")
    return [by_case[case_id] for case_id in case_ids]


def remove_partials(out_dir) -> None:
    """After the merged outputs are committed (or when a single process takes the folder over): the shares
    are no longer needed. Only files of ours go (a user's own ``shards`` folder keeps everything else)."""
    folder = shards_dir(out_dir)
    if not folder.is_dir():
        return
    for pattern in ("rank_*.json", "failures_rank_*.log"):
        for path in folder.glob(pattern):
            path.unlink(missing_ok=True)
    remove_stale_temporaries(folder)
    try:
        folder.rmdir()
    except OSError:  # not empty: something else lives there
        pass
