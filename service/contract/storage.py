"""The data dir: where datasets, uploaded weights and job artifacts live on disk.

Layout (the data dir is shared storage: a shared volume when API and workers run on several machines)::

    <data dir>/
      datasets/<id>/data.npz            X (float32 [n, ...]) and, when labelled, y (int64 [n])
      datasets/<id>/weights.safetensors an uploaded set of weights
      jobs/<id>/<artifact>              similarity.npy, primary_index.npy, examples.npy, labels.npy, clusters.npy,
                                        weights.safetensors, heatmap.png, elasticity.png, result.json,
                                        neighbors_index.npy, neighbors_value.npy, observed_index.npy
      valkey/                           the embedded server's AOF and log (`lelastic up`)

Every file is written to a temporary name in the same folder and renamed into place, so a reader
never sees a half-written file.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

#: Artifact name → media type. Only these names are ever served.
ARTIFACT_TYPES = {
    "similarity.npy": "application/octet-stream",
    "primary_index.npy": "application/octet-stream",
    "examples.npy": "application/octet-stream",
    "labels.npy": "application/octet-stream",
    "clusters.npy": "application/octet-stream",
    "neighbors_index.npy": "application/octet-stream",
    "neighbors_value.npy": "application/octet-stream",
    "observed_index.npy": "application/octet-stream",
    "weights.safetensors": "application/octet-stream",
    "heatmap.png": "image/png",
    "elasticity.png": "image/png",
    "result.json": "application/json",
}

DATASET_FILE = "data.npz"
WEIGHTS_FILE = "weights.safetensors"


class DataDir:
    """Paths inside one data dir. Creating it creates the folders."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()
        for sub in ("datasets", "jobs"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    def dataset_dir(self, dataset_id: str) -> Path:
        return self.root / "datasets" / dataset_id

    def dataset_file(self, dataset_id: str) -> Path:
        return self.dataset_dir(dataset_id) / DATASET_FILE

    def weights_file(self, upload_id: str) -> Path:
        return self.dataset_dir(upload_id) / WEIGHTS_FILE

    def job_dir(self, job_id: str) -> Path:
        return self.root / "jobs" / job_id

    def artifact(self, job_id: str, name: str) -> Path:
        if name not in ARTIFACT_TYPES:
            raise KeyError(name)
        return self.job_dir(job_id) / name

    def valkey_dir(self) -> Path:
        return self.root / "valkey"

    def remove_dataset(self, dataset_id: str) -> None:
        shutil.rmtree(self.dataset_dir(dataset_id), ignore_errors=True)

    def remove_job(self, job_id: str) -> None:
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)

    def is_writable(self) -> bool:
        """True when a file can be created in the data dir right now."""
        try:
            with tempfile.NamedTemporaryFile(dir=self.root, prefix=".probe-"):
                return True
        except OSError:
            return False


@contextlib.contextmanager
def atomic_open(path: Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside `path`; on success fsync it and rename it to `path`.

    On any error the temporary file is removed and `path` is left as it was.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically (temp file + rename)."""
    with atomic_open(path) as handle:
        handle.write(data)
