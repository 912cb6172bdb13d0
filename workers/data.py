"""Resolve a job spec's dataset and selections to arrays: X, labels, primary and auxiliary rows."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.contract.spec import BuiltinDataset, JobSpec, Selection
from service.contract.storage import DataDir
from workers.errors import JobFailure


@dataclass
class JobData:
    """The examples a job works on.

    X: float32 (n_total, *shape); y: int64 (n_total,) or None; coords: float64 (n_total, p) intrinsic
    coordinates of a synthetic builtin, else None; primary / auxiliary: int64 row indices into X.
    """

    X: np.ndarray
    y: np.ndarray | None
    coords: np.ndarray | None
    builtin: str | None
    primary: np.ndarray
    auxiliary: np.ndarray
    #: The original names of string labels, by integer label (uploads with string labels only).
    label_names: list[str] | None = None


def load_dataset(
    spec: JobSpec, data_dir: DataDir
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, str | None]:
    """(X, y, coords, builtin name) of the spec's dataset."""
    if isinstance(spec.dataset, BuiltinDataset):
        from workers.compute.datasets import load_builtin

        builtin = load_builtin(spec.dataset.builtin, n=spec.dataset.n, seed=spec.dataset.seed)
        return builtin.X.astype(np.float32), builtin.y, builtin.coords, spec.dataset.builtin
    path = data_dir.dataset_file(spec.dataset)
    if not path.exists():
        raise JobFailure(f"dataset {spec.dataset!r} no longer exists")
    with np.load(path, allow_pickle=False) as archive:
        X = np.asarray(archive["X"], dtype=np.float32)
        y = np.asarray(archive["y"], dtype=np.int64) if "y" in archive.files else None
    return X, y, None, None


def label_names(spec: JobSpec, data_dir: DataDir) -> list[str] | None:
    """The original names of an uploaded dataset's string labels, by integer label (None otherwise)."""
    if isinstance(spec.dataset, BuiltinDataset):
        return None
    path = data_dir.dataset_file(spec.dataset)
    with np.load(path, allow_pickle=False) as archive:
        return [str(name) for name in archive["label_names"]] if "label_names" in archive.files else None


def select(selection: Selection | None, y: np.ndarray | None, n: int, *, field: str, default_all: bool) -> np.ndarray:
    """Row indices picked by a selection: by label (ascending row order) or the given indices in order."""
    if selection is None:
        return np.arange(n, dtype=np.int64) if default_all else np.zeros(0, dtype=np.int64)
    if selection.labels is not None:
        if y is None:
            raise JobFailure(f"{field}.labels needs a dataset with labels; this one has none")
        rows = np.flatnonzero(np.isin(y, selection.labels))
        missing = sorted(set(selection.labels) - set(np.unique(y).tolist()))
        if missing:
            raise JobFailure(f"{field}.labels {missing} do not occur in the dataset")
        return rows.astype(np.int64)
    rows = np.asarray(selection.indices, dtype=np.int64)
    if rows.size and rows.max() >= n:
        raise JobFailure(f"{field}.indices has {int(rows.max())}, but the dataset has only {n} rows")
    return rows


def resolve(spec: JobSpec, data_dir: DataDir) -> JobData:
    """Load the dataset and the primary/auxiliary rows the spec selects."""
    X, y, coords, builtin = load_dataset(spec, data_dir)
    n = X.shape[0]
    primary = select(spec.primary, y, n, field="primary", default_all=True)
    auxiliary = select(spec.auxiliary, y, n, field="auxiliary", default_all=False)
    if spec.primary is None and auxiliary.size:
        primary = np.setdiff1d(primary, auxiliary)
    overlap = np.intersect1d(primary, auxiliary)
    if overlap.size:
        raise JobFailure(f"primary and auxiliary share {overlap.size} rows (e.g. row {int(overlap[0])})")
    if primary.size < 2:
        raise JobFailure(f"primary selects {primary.size} examples; at least 2 are needed")
    if spec.clustering is not None and spec.clustering.k is not None and primary.size < spec.clustering.k:
        raise JobFailure(f"primary selects {primary.size} examples, fewer than clustering.k = {spec.clustering.k}")
    names = label_names(spec, data_dir) if y is not None else None
    return JobData(X=X, y=y, coords=coords, builtin=builtin, primary=primary, auxiliary=auxiliary, label_names=names)
