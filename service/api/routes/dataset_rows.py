"""/v1/datasets/{id}/rows: a page of an uploaded dataset's examples, for previews and thumbnails."""

from __future__ import annotations

import math
import struct
import zipfile
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from service.api import uploads
from service.api.deps import DataDirDep, RedisDep, TenantDep
from service.api.errors import Conflict, NotFound
from service.api.schemas import ErrorOut
from service.api.usecases import queries

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])

MAX_ROWS = 100


class RowsOut(BaseModel):
    """Rows `offset` to `offset + len(X) - 1` of a dataset, each flattened to its features."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"offset": 0, "n": 150, "shape": [2], "X": [[5.1, 3.5]], "y": [0]}]}
    )
    offset: int = Field(description="Row number of the first row returned.")
    n: int = Field(description="Examples in the whole dataset.")
    shape: list[int] = Field(description="Shape of one example (X rows are flattened).")
    X: list[list[float]] = Field(description="The rows' features, flattened.")
    y: list[int] | None = Field(description="The rows' labels, or null for an unlabelled dataset.")


@router.get(
    "/{dataset_id}/rows",
    response_model=RowsOut,
    summary="Read some of a dataset's rows",
    description=f"Up to {MAX_ROWS} consecutive examples (features and labels) of an uploaded dataset, "
    "e.g. to preview it or draw thumbnails of image-shaped data.",
    responses={
        404: {"model": ErrorOut, "description": "No such dataset."},
        409: {"model": ErrorOut, "description": "The upload is a set of weights, not a dataset."},
    },
)
def read_rows(
    dataset_id: str,
    conn: RedisDep,
    data_dir: DataDirDep,
    tenant: TenantDep,
    offset: Annotated[int, Query(ge=0, le=10**9, description="First row.")] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_ROWS, description="Rows to return.")] = 20,
) -> RowsOut:
    record = queries.owned_dataset(conn, dataset_id, tenant)
    if record.get("kind") != "dataset":
        raise Conflict.at(["path", "dataset_id"], "this upload is a set of weights, not a dataset", dataset_id)
    path = data_dir.dataset_file(dataset_id)
    if not path.exists():
        raise NotFound.at(["path", "dataset_id"], "the dataset's files are gone", dataset_id)
    with zipfile.ZipFile(path) as archive:
        shape, X = _member_rows(archive, "X.npy", offset, limit)
        y = _member_rows(archive, "y.npy", offset, limit)[1] if "y.npy" in archive.namelist() else None
    features = math.prod(shape[1:])
    return RowsOut(
        offset=offset,
        n=shape[0],
        shape=list(shape[1:]),
        X=X.reshape(-1, features).astype(np.float64).tolist(),
        y=None if y is None else y.astype(np.int64).tolist(),
    )


def _member_rows(archive: zipfile.ZipFile, member: str, offset: int, limit: int) -> tuple[tuple[int, ...], np.ndarray]:
    """(shape, rows offset to offset + limit - 1) of an .npy member of the archive, reading only those rows'
    bytes when the member is stored uncompressed (as the API writes datasets); otherwise the member is read."""
    info = archive.getinfo(member)
    with archive.open(info) as stream:
        shape, fortran_order, dtype = uploads.read_npy_header(stream)
        array_start = stream.tell()
        if fortran_order or info.compress_type != zipfile.ZIP_STORED:
            stream.seek(0)
            return shape, uploads.read_npy_array(stream)[offset : offset + limit]
    row_bytes = math.prod(shape[1:]) * dtype.itemsize
    start, stop = min(offset, shape[0]), min(offset + limit, shape[0])
    with open(str(archive.filename), "rb") as handle:
        handle.seek(info.header_offset + 26)  # the local header's file name and extra field lengths
        name_length, extra_length = struct.unpack("<HH", handle.read(4))
        handle.seek(info.header_offset + 30 + name_length + extra_length + array_start + start * row_bytes)
        data = handle.read((stop - start) * row_bytes)
    return shape, np.frombuffer(data, dtype=dtype).reshape(stop - start, *shape[1:])
