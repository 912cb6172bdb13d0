"""How a submitted job will run: single or sharded (`service.contract.sharding`), checked and resolved.

`resolve_execution` runs after `validation.check_job_spec`. It decides the mode (`auto`: sharded above
`shard_above_n` primary examples), checks what only a sharded job has (its limits, tiles, the kinds and
schedules it refuses, observed columns) and returns the spec with `execution.mode` and `output.matrix`
resolved, which is the spec the job record stores and `GET /v1/jobs/{id}` shows.
"""

from __future__ import annotations

from typing import Any

import redis

from service.api import limits, validation
from service.api.errors import InvalidInput, issue
from service.contract import sharding
from service.contract import spec as job_spec
from service.contract.settings import Settings
from service.contract.storage import DataDir


def _observed_count(spec: job_spec.JobSpec, facts: validation.DatasetFacts) -> int | None:
    if spec.observed is None:
        return validation.primary_count(spec, facts)
    if spec.observed.indices is not None:
        return len(spec.observed.indices)
    if facts.class_counts is None:
        return None
    return sum(facts.class_counts.get(int(label), 0) for label in spec.observed.labels or [])


def resolve_execution(
    conn: redis.Redis, data_dir: DataDir, spec: job_spec.JobSpec, *, tenant: str, settings: Settings
) -> job_spec.JobSpec:
    """The spec with its execution mode and output.matrix resolved; InvalidInput listing every way the
    job cannot run in that mode."""
    facts = validation.dataset_facts(conn, data_dir, spec.dataset, tenant)
    n_rows = validation.primary_count(spec, facts)
    mode = sharding.resolve_mode(spec, n_rows, settings)
    found: list[dict[str, Any]] = []
    if spec.observed is not None:
        found += validation._selection_issues("observed", spec.observed, facts)
    n_cols = _observed_count(spec, facts)
    matrix: bool | str = spec.output.matrix
    if mode == "single":
        if spec.observed is not None:
            for loc, msg, value in sharding.refusals(spec):  # observed columns are computed tile by tile
                found.append(
                    issue(
                        loc,
                        "with observed columns, " + msg.replace("execution.mode 'single'", "drop 'observed'"),
                        value,
                    )
                )
        matrix = True  # a single job always writes its matrix (within max_matrix_bytes)
    else:
        found += [issue(loc, msg, value) for loc, msg, value in sharding.refusals(spec)]
        places: list[tuple[list[str | int], int | None]] = [
            (["body", "primary"], n_rows),
            (["body", "observed"], n_cols),
        ]
        for where, count in places:
            if count is not None and count > settings.max_sharded_examples:
                found.append(
                    limits.limit_issue(where, "n", count, "max_sharded_examples", settings.max_sharded_examples)
                )
        if n_rows is not None and n_cols is not None:
            block = spec.execution.block
            tiles = len(sharding.plan(n_rows, n_cols, block, square=spec.observed is None))
            if tiles > settings.max_tiles:
                found.append(
                    limits.limit_issue(
                        ["body", "execution", "block"],
                        f"the tiles of {block} × {block} (n = {n_rows} rows, {n_cols} columns)",
                        tiles,
                        "max_tiles",
                        settings.max_tiles,
                    )
                )
            size = 4 * n_rows * n_cols
            if spec.output.matrix is True and size > settings.max_sharded_matrix_bytes:
                found.append(
                    limits.limit_issue(
                        ["body", "output", "matrix"],
                        f"the float32 matrix, {n_rows} × {n_cols} × 4 bytes,",
                        size,
                        "max_sharded_matrix_bytes",
                        settings.max_sharded_matrix_bytes,
                        " bytes",
                    )
                )
            if matrix == "auto":
                matrix = size <= settings.max_sharded_matrix_bytes
    if found:
        raise InvalidInput(found)
    return spec.model_copy(
        update={
            "execution": spec.execution.model_copy(update={"mode": mode}),
            "output": spec.output.model_copy(update={"matrix": matrix}),
        }
    )
