"""Folding a sharded job's partial top-k lists into each row block's list, on a real Valkey: any order
of folds gives the exact top k, a part is merged once, a busy or lapsed lock changes nothing."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from service.contract import keys, sharding
from workers import folds
from workers.compute import tiles

JOB = "f" * 32
ROWS, BLOCK, K = 5, 6, 4  # a row block of 5 rows, column blocks of 6 columns, top 4


def dense_rows(col_blocks: int, seed: int = 0) -> np.ndarray:
    """[ROWS, col_blocks · BLOCK] similarities with many ties (values on a coarse grid)."""
    return np.random.default_rng(seed).integers(0, 5, size=(ROWS, col_blocks * BLOCK)).astype(np.float32)


def write_part(shard_dir: Path, matrix: np.ndarray, row_block: int, col_block: int, shift: float = 0.0) -> None:
    block = matrix[:, col_block * BLOCK : (col_block + 1) * BLOCK] + shift
    columns, values = tiles.topk(block, K, col_offset=col_block * BLOCK)
    folds.write_atomic(folds.part_path(shard_dir, row_block, col_block), {"columns": columns, "values": values})


def expected_topk(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The top K of each row, value descending and ties by the lower column (a stable sort)."""
    order = np.argsort(-matrix, axis=1, kind="stable")[:, :K]
    return order.astype(np.int32), np.take_along_axis(matrix, order, axis=1)


def test_folds_in_any_order_give_the_exact_top_k(tmp_path, redis_conn):
    matrix = dense_rows(4)
    write_part(tmp_path, matrix, 0, 2)
    assert folds.fold(redis_conn, JOB, tmp_path, 0, K) == 1
    write_part(tmp_path, matrix, 0, 0)
    write_part(tmp_path, matrix, 0, 3)
    assert folds.fold(redis_conn, JOB, tmp_path, 0, K) == 2
    write_part(tmp_path, matrix, 0, 1)
    assert folds.fold(redis_conn, JOB, tmp_path, 0, K) == 1
    columns, values, covered = folds.read_list(tmp_path, 0)
    want_columns, want_values = expected_topk(matrix)
    np.testing.assert_array_equal(columns, want_columns)
    np.testing.assert_array_equal(values, want_values)
    assert covered == {0, 1, 2, 3}
    assert folds.parts_of(tmp_path, 0) == {}, "folded parts are deleted"
    assert not redis_conn.exists(keys.job_fold_lock(JOB, 0)), "the lock is released"


def test_a_part_of_a_covered_column_block_is_deleted_unread(tmp_path, redis_conn):
    matrix = dense_rows(2)
    write_part(tmp_path, matrix, 0, 0)
    write_part(tmp_path, matrix, 0, 1)
    folds.fold(redis_conn, JOB, tmp_path, 0, K)
    before = folds.read_list(tmp_path, 0)
    write_part(tmp_path, matrix, 0, 1, shift=100.0)  # a tile run twice (different values would show)
    assert folds.fold(redis_conn, JOB, tmp_path, 0, K) == 0
    after = folds.read_list(tmp_path, 0)
    np.testing.assert_array_equal(after[1], before[1])
    assert folds.parts_of(tmp_path, 0) == {}


def test_a_busy_row_block_is_left_for_a_later_fold(tmp_path, redis_conn):
    matrix = dense_rows(1)
    write_part(tmp_path, matrix, 0, 0)
    token = sharding.acquire_fold(redis_conn, JOB, 0)
    assert token is not None
    assert folds.fold(redis_conn, JOB, tmp_path, 0, K) is None
    assert set(folds.parts_of(tmp_path, 0)) == {0} and folds.read_list(tmp_path, 0) is None
    assert folds.fold(redis_conn, JOB, tmp_path, 0, K, wait=0.1) is None, "still held after waiting"
    sharding.release_fold(redis_conn, JOB, 0, token)
    assert folds.fold(redis_conn, JOB, tmp_path, 0, K) == 1


def test_release_leaves_a_lock_another_process_holds_now(redis_conn):
    stale = sharding.acquire_fold(redis_conn, JOB, 3)
    assert stale is not None
    redis_conn.set(keys.job_fold_lock(JOB, 3), "another holder")  # the stale lock lapsed and was taken
    sharding.release_fold(redis_conn, JOB, 3, stale)
    assert redis_conn.get(keys.job_fold_lock(JOB, 3)) == b"another holder"
    assert not sharding.holds_fold(redis_conn, JOB, 3, stale)


def test_a_write_whose_lock_lapsed_replaces_nothing_and_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "list-0.npz"
    folds.write_atomic(target, {"columns": np.zeros((1, 1), np.int32)})
    assert not folds.write_atomic(target, {"columns": np.ones((1, 1), np.int32)}, still_held=lambda: False)
    with np.load(target) as stored:
        assert stored["columns"][0, 0] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["list-0.npz"]


def test_row_block_1_does_not_take_the_parts_of_row_block_12(tmp_path, redis_conn):
    matrix = dense_rows(1)
    write_part(tmp_path, matrix, 1, 0)
    write_part(tmp_path, matrix, 12, 0)
    assert set(folds.parts_of(tmp_path, 1)) == {0}
    folds.fold(redis_conn, JOB, tmp_path, 1, K)
    assert set(folds.parts_of(tmp_path, 12)) == {0}


def test_tiles_folding_at_once_lose_no_part(tmp_path, redis_conn):
    """Eight column blocks' parts written and folded by four threads at once (a busy lock skips), then the
    reduce step's fold with waiting: the list is the exact top k of all of them."""
    matrix = dense_rows(8, seed=1)
    errors: list[BaseException] = []

    def tile(col_blocks: list[int]) -> None:
        try:
            for col_block in col_blocks:
                write_part(tmp_path, matrix, 0, col_block)
                folds.fold(redis_conn, JOB, tmp_path, 0, K)
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=tile, args=([c, c + 4],)) for c in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    folds.fold(redis_conn, JOB, tmp_path, 0, K, wait=5.0)
    columns, values, covered = folds.read_list(tmp_path, 0)
    want_columns, want_values = expected_topk(matrix)
    np.testing.assert_array_equal(columns, want_columns)
    np.testing.assert_array_equal(values, want_values)
    assert covered == set(range(8)) and folds.parts_of(tmp_path, 0) == {}


def test_the_reduce_names_a_row_block_whose_list_misses_a_column_block(tmp_path, redis_conn):
    from workers import shards
    from workers.errors import JobFailure

    shard_dir = tmp_path / shards.SHARDS
    shard_dir.mkdir()
    write_part(shard_dir, dense_rows(2), 0, 0)  # column block 1 never came
    with pytest.raises(JobFailure, match=r"row block 0: no top-k lists of column blocks \[1\]"):
        shards._merge_neighbors(redis_conn, JOB, tmp_path, ROWS, 2 * BLOCK, BLOCK, False, K, landmarks=False)
