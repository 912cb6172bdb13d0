"""/v1/datasets/{id}/rows: a page of an uploaded dataset's examples, for previews and thumbnails."""

from __future__ import annotations

from typing import Annotated

import numpy as np
from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

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
    with np.load(path, allow_pickle=False) as archive:
        X = archive["X"]
        y = archive["y"] if "y" in archive.files else None
    rows = slice(offset, offset + limit)
    features = int(np.prod(X.shape[1:], dtype=np.int64))
    return RowsOut(
        offset=offset,
        n=int(X.shape[0]),
        shape=[int(size) for size in X.shape[1:]],
        X=X[rows].reshape(-1, features).astype(np.float64).tolist(),
        y=None if y is None else y[rows].astype(np.int64).tolist(),
    )
