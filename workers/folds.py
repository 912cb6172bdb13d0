"""A sharded job's neighbour lists, folded row block by row block as its tiles complete.

Tile (I, J) writes the partial top-k lists of rows I over columns J as `part-I-J.npz` (and of rows J
over columns I as `part-J-I.npz`, square jobs). Folding row block r merges every `part-r-*.npz` into
`list-r.npz` (the running top-k of rows r, with the column blocks it covers) and deletes the parts, so
the job's folder holds about n × k lists rather than one pair of lists per tile: at 10^6 rows, k = 32
and blocks of 8192, 256 MB instead of about 30 GB.

A fold holds the row block's lock in Redis (`sharding.acquire_fold`); a tile that finds it busy leaves
its part for the next fold of that row block, and the reduce step folds what is left. A fold is
idempotent: a part whose column block the list covers already (a tile run twice) is deleted unread.
The list is replaced by a rename, after checking the lock is still held, so a fold that dies leaves
the previous list and its parts. Top-k merging is associative (value descending, ties by the lower
column), so folding in any order gives the lists one merge of every part would.

Files, in the job's `shards/` folder::

    part-R-C.npz    `columns` int32 [rows of block R, k'], `values` float32 [same]: rows R over columns C
    list-R.npz      `columns`, `values` [rows of block R, k] and `blocks` int64 [covered column blocks]
    land-R-C.npy    float32 [rows of block R, landmarks in column block C] (Nyström's C, not folded)
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import redis

from service.contract import sharding
from workers.compute import tiles

_PART = re.compile(r"part-(\d+)-(\d+)\.npz")


def part_path(shard_dir: Path, row_block: int, col_block: int) -> Path:
    return shard_dir / f"part-{row_block}-{col_block}.npz"


def list_path(shard_dir: Path, row_block: int) -> Path:
    return shard_dir / f"list-{row_block}.npz"


def land_path(shard_dir: Path, row_block: int, col_block: int) -> Path:
    return shard_dir / f"land-{row_block}-{col_block}.npy"


def write_atomic(path: Path, arrays: dict[str, np.ndarray], *, still_held: Callable[[], bool] | None = None) -> bool:
    """Write `arrays` as .npz (or one array as .npy, when `path` ends so) through a temporary name in the
    existing folder of `path` (never created). `still_held` is asked just before the rename (a fold's
    lock); when it says False nothing is replaced and the result is False."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            if path.suffix == ".npy":
                (array,) = arrays.values()
                np.save(handle, array)
            else:
                np.savez(handle, **arrays)  # type: ignore[arg-type]
        if still_held is not None and not still_held():
            os.unlink(tmp)
            return False
        os.replace(tmp, path)
        return True
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def parts_of(shard_dir: Path, row_block: int) -> dict[int, Path]:
    """Column block → part file of the row block's parts on disk now."""
    found = {}
    for path in shard_dir.glob(f"part-{row_block}-*.npz"):
        match = _PART.fullmatch(path.name)
        if match is not None and int(match[1]) == row_block:
            found[int(match[2])] = path
    return found


def read_list(shard_dir: Path, row_block: int) -> tuple[np.ndarray, np.ndarray, set[int]] | None:
    """(columns, values, covered column blocks) of the row block's list; None before its first fold."""
    path = list_path(shard_dir, row_block)
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as stored:
        return stored["columns"], stored["values"], {int(b) for b in stored["blocks"]}


def fold(conn: redis.Redis, job_id: str, shard_dir: Path, row_block: int, k: int, *, wait: float = 0.0) -> int | None:
    """Merge the row block's parts on disk into its list and delete them. Returns how many parts were
    merged (parts of column blocks already covered are deleted unread), or None when another process
    held the row block's lock for `wait` seconds (nothing was done)."""
    token = sharding.acquire_fold(conn, job_id, row_block, wait=wait)
    if token is None:
        return None
    try:
        parts = parts_of(shard_dir, row_block)
        if not parts:
            return 0
        stored = read_list(shard_dir, row_block)
        columns, values, covered = ([stored[0]], [stored[1]], stored[2]) if stored else ([], [], set())
        fresh = sorted(set(parts) - covered)
        for col_block in fresh:
            with np.load(parts[col_block], allow_pickle=False) as part:
                columns.append(part["columns"])
                values.append(part["values"])
        if fresh:
            merged_columns, merged_values = tiles.merge_topk(columns, values, k)
            blocks = np.array(sorted(covered | set(fresh)), dtype=np.int64)
            arrays = {"columns": merged_columns, "values": merged_values, "blocks": blocks}

            def held() -> bool:
                return sharding.holds_fold(conn, job_id, row_block, token)

            if not write_atomic(list_path(shard_dir, row_block), arrays, still_held=held):
                return None  # the lock lapsed: the parts stay for the next fold
        for path in parts.values():
            path.unlink(missing_ok=True)
        return len(fresh)
    finally:
        sharding.release_fold(conn, job_id, row_block, token)


__all__ = ["fold", "land_path", "list_path", "part_path", "parts_of", "read_list", "write_atomic"]
