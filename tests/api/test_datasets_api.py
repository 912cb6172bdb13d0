"""POST/GET/DELETE /v1/datasets: every upload format, every rejection, and the resource's life."""

from __future__ import annotations

import io
import struct
import tracemalloc
import zipfile

import numpy as np
import pytest

from service.api import uploads
from service.contract import records
from tests.factories import app_client, assert_names, blobs, npy_bytes, npz_bytes, safetensors_bytes, upload


def test_npz_with_labels_is_stored_as_float32_and_int64(client, settings):
    X, y = blobs()
    response = upload(client, "blobs.npz", npz_bytes(X=X, y=y))
    assert response.status_code == 201, response.text
    body = response.json()
    assert response.headers["location"] == f"/v1/datasets/{body['id']}"
    assert body | {"id": None, "created_at": None} == {
        "id": None,
        "created_at": None,
        "kind": "dataset",
        "name": "blobs.npz",
        "n": 12,
        "shape": [3],
        "dtype": "float32",
        "has_labels": True,
        "classes": [0, 1],
        "class_counts": {"0": 6, "1": 6},
        "tensors": None,
        "label_names": None,
        "label_column": None,
        "notes": None,
    }
    assert body["created_at"].endswith("Z")
    with np.load(settings.data_dir / "datasets" / body["id"] / "data.npz") as stored:
        assert stored["X"].dtype == np.float32 and stored["y"].dtype == np.int64
        np.testing.assert_allclose(stored["X"], X.astype(np.float32))


def test_npz_without_labels_and_npy_keep_the_example_shape(client):
    images = np.zeros((5, 2, 4, 4), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(5)
    for name, content in (("a.npz", npz_bytes(X=images)), ("a.npy", npy_bytes(images))):
        body = upload(client, name, content).json()
        assert (body["n"], body["shape"], body["has_labels"], body["classes"]) == (5, [2, 4, 4], False, None)


def test_csv_with_header_and_label_column(client):
    content = b"a,b,label\n1,2,3\n4.5,-1e3,5\n\n0,0,3\n"
    body = upload(client, "t.csv", content, label_column="label").json()
    assert (body["n"], body["shape"], body["classes"], body["class_counts"]) == (
        3,
        [2],
        [3, 5],
        {"3": 2, "5": 1},
    )


def test_csv_without_header_takes_the_label_column_by_number(client):
    body = upload(client, "t.csv", b"1,2,0\n3,4,1\n", label_column="2").json()
    assert (body["n"], body["shape"], body["classes"]) == (2, [2], [0, 1])


def test_safetensors_is_stored_as_weights_with_its_tensors(client, settings):
    content = safetensors_bytes({"layers.0.weight": ("F32", [4, 3]), "layers.0.bias": ("F32", [4])})
    response = upload(client, "w.safetensors", content)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["kind"] == "weights" and body["n"] is None
    assert body["tensors"] == {
        "layers.0.weight": {"dtype": "F32", "shape": [4, 3]},
        "layers.0.bias": {"dtype": "F32", "shape": [4]},
    }
    assert (settings.data_dir / "datasets" / body["id"] / "weights.safetensors").read_bytes() == content


@pytest.mark.parametrize(
    ("filename", "content", "status", "fragments"),
    [
        (
            "x.npy",
            npy_bytes(np.array([{"a": 1}, None], dtype=object), allow_pickle=True),
            422,
            ["file", "pickle"],
        ),
        ("x.npz", npz_bytes(X=np.array([[1.0], [np.nan]])), 422, ['"X"', "non-finite", "nan"]),
        ("x.npz", npz_bytes(X=np.ones((3, 2)), y=np.array([0, 1])), 422, ['"y"', "[2]", "shape [3]"]),
        ("x.npz", npz_bytes(X=np.ones((3, 2)), y=np.array([0, 1.5, 1])), 422, ['"y"', "integer", "1.5"]),
        ("x.npz", npz_bytes(X=np.ones((1, 2))), 422, ['"X"', "n >= 2", "[1, 2]"]),
        ("x.npz", npz_bytes(X=np.array(["a", "b"])), 422, ['"X"', "numeric"]),
        ("x.npz", npz_bytes(data=np.ones((3, 2))), 422, ["'X'", '["data"]']),
        ("x.npy", b"not an array", 422, ["file", ".npy"]),
        ("x.csv", b"a,b\n1,2\n3,oops\n", 422, ["row 3", "column b", "oops"]),
        ("x.csv", b"1,2\n3\n", 422, ["row 2", "1 columns"]),
        ("x.csv", b"1,2\n3,inf\n", 422, ["row 2", "column 1", "inf"]),
        ("x.csv", b"1,2\n3,1e39\n", 422, ["row 2", "column 1", "1e39", "float32's range"]),
        ("x.txt", b"1,2\n", 422, ["file", ".npz", "x.txt"]),
        ("w.safetensors", safetensors_bytes({}, header=b"{not json"), 422, ["safetensors", "JSON"]),
        ("w.safetensors", struct.pack("<Q", 10**9) + b"{}", 422, ["safetensors", "header length"]),
        ("w.safetensors", safetensors_bytes({"w": ("F32", [2])})[:-1], 422, ["safetensors", "bytes"]),
        (
            "w.safetensors",
            safetensors_bytes({}, header=b'{"w": {"dtype": "F99", "shape": [1], "data_offsets": [0, 4]}}'),
            422,
            ["F99", "allowed"],
        ),
        ("x.npz", npz_bytes(X=np.ones((3, 2)), y=np.array(["a", "\ud800", "b"])), 422, ['"y"', "UTF-8", "ud800"]),
        ("x.npz", npz_bytes(X=np.ones((3, 2)), y=np.array([b"a", b"\xff", b"b"])), 422, ['"y"', "UTF-8", "xff"]),
        ("x.npz", npz_bytes(X=np.ones((3, 2)), y=np.array(["a", "\0", "b"])), 422, ['"y"', "must not be empty"]),
        ("x.npz", npz_bytes(X=np.ones((3, 2)), y=np.array(["a" * 201, "b", "c"])), 422, ['"y"', "at most 200"]),
        ("x.csv", b"label\n1\n2\n", 422, ["row 1", "'label' holds the labels", "no column"]),
        ("x.csv", b"a,label\n1,cat\n2," + b"d" * 201 + b"\n", 422, ["row 3", "column 'label'", "at most 200"]),
        (
            "w.safetensors",
            safetensors_bytes({}, header=b'{"\\ud800": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}')
            + b"\0" * 4,
            422,
            ["safetensors", "tensor names must be UTF-8", "ud800"],
        ),
    ],
    ids=[
        "pickle",
        "nan",
        "y-length",
        "y-float",
        "n<2",
        "strings",
        "no-X",
        "npy-garbage",
        "csv-cell",
        "csv-ragged",
        "csv-inf",
        "csv-beyond-float32",
        "extension",
        "st-json",
        "st-length",
        "st-size",
        "st-dtype",
        "y-surrogate",
        "y-bytes-not-utf8",
        "y-empty-name",
        "y-long-name",
        "csv-only-labels",
        "csv-long-name",
        "st-name-surrogate",
    ],
)
def test_bad_uploads_are_rejected_naming_the_problem(client, settings, filename, content, status, fragments):
    assert_names(upload(client, filename, content), status, *fragments)
    assert client.get("/v1/datasets").json()["count"] == 0
    leftovers = [p.name for p in settings.data_dir.rglob("*") if p.is_file()]
    assert leftovers == [], "a rejected upload must leave no files behind"


def test_label_column_must_exist(client):
    assert_names(
        upload(client, "t.csv", b"a,b\n1,2\n3,4\n", label_column="c"),
        422,
        "label_column",
        '"c"',
        "['a', 'b']",
    )


def test_oversize_upload_is_413_and_leaves_nothing(settings):
    small = settings.model_copy(update={"max_upload_bytes": 4096})
    with app_client(small) as client:
        assert upload(client, "ok.npy", npy_bytes(np.zeros((100, 4)))).status_code == 201
        assert_names(upload(client, "big.npy", npy_bytes(np.zeros((600, 1)))), 413, "max_upload_bytes", "4096")
        assert client.get("/v1/datasets").json()["count"] == 1
    assert [p.name for p in settings.data_dir.iterdir() if p.is_file()] == []


def test_missing_file_part_is_422(client):
    response = client.post("/v1/datasets", files={"label_column": (None, "x")})
    assert_names(response, 422, "file", "field required")


def test_list_get_delete_and_404(client, settings):
    X, y = blobs()
    first = upload(client, "a.npz", npz_bytes(X=X, y=y)).json()
    second = upload(client, "b.npy", npy_bytes(X)).json()
    listed = client.get("/v1/datasets").json()
    assert listed["count"] == 2 and [d["id"] for d in listed["data"]] == [second["id"], first["id"]]
    assert client.get(f"/v1/datasets/{first['id']}").json() == first
    assert client.delete(f"/v1/datasets/{first['id']}").status_code == 204
    assert not (settings.data_dir / "datasets" / first["id"]).exists()
    assert_names(client.get(f"/v1/datasets/{first['id']}"), 404, "dataset_id", first["id"])
    assert_names(client.delete(f"/v1/datasets/{first['id']}"), 404, "dataset_id")
    assert client.get("/v1/datasets").json()["count"] == 1


def test_delete_is_refused_while_a_queued_job_uses_the_dataset(client, redis_conn):
    X, y = blobs()
    dataset = upload(client, "a.npz", npz_bytes(X=X, y=y)).json()
    job = client.post("/v1/jobs", json={"dataset": dataset["id"], "weights": {"source": "init"}}).json()
    detail = assert_names(client.delete(f"/v1/datasets/{dataset['id']}"), 409, "in use", job["id"])
    assert detail[0]["loc"] == ["path", "dataset_id"]
    client.delete(f"/v1/jobs/{job['id']}")
    assert client.delete(f"/v1/datasets/{dataset['id']}").status_code == 204
    assert records.get_dataset(redis_conn, dataset["id"]) is None


def test_datasets_paginate_like_jobs(client):
    ids = [upload(client, f"d{i}.npz", npz_bytes(X=blobs()[0])).json()["id"] for i in range(3)]
    first = client.get("/v1/datasets", params={"limit": 2}).json()
    assert [d["id"] for d in first["data"]] == ids[::-1][:2] and first["count"] == 2
    second = client.get("/v1/datasets", params={"limit": 2, "cursor": first["next_cursor"]}).json()
    assert [d["id"] for d in second["data"]] == [ids[0]] and second["next_cursor"] is None
    assert client.get("/v1/datasets", params={"limit": 3}).json()["next_cursor"] is None
    assert_names(client.get("/v1/datasets", params={"cursor": "nope"}), 422, "cursor", "next_cursor")


@pytest.mark.parametrize("dtype", ["<f8", ">f4", "<i8"])
def test_an_npz_x_in_another_dtype_is_converted_a_chunk_at_a_time(settings, tmp_path, monkeypatch, dtype):
    """Its peak is the float32 array plus one chunk, not the array in its own dtype plus a float32 copy."""
    monkeypatch.setattr(uploads, "DECODE_CHUNK_BYTES", 2**20)
    X = (np.arange(2000 * 1000) % 997 - 498).reshape(2000, 1000).astype(dtype)
    path = tmp_path / "x.npz"
    path.write_bytes(npz_bytes(X=X, y=np.arange(2000) % 3))
    tracemalloc.start()
    try:
        parsed = uploads.read_npz(path, settings)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert parsed.X.dtype == np.float32 and np.array_equal(parsed.X, X.astype(np.float32))
    assert parsed.y is not None and parsed.y.tolist() == (np.arange(2000) % 3).tolist()
    assert peak < 1.3 * parsed.X.nbytes + 2**20, f"peak {peak / 2**20:.1f} MiB for {parsed.X.nbytes / 2**20:.1f} MiB"


def test_a_truncated_or_overflowing_npz_x_is_422(client):
    X = np.ones((50, 4), dtype=np.float64)
    X[7, 2] = 1e300
    assert_names(upload(client, "x.npz", npz_bytes(X=X)), 422, '"X"', "too large for float32", "7", "2")
    whole = npz_bytes(X=np.ones((50, 4), dtype=np.float64))
    buffer = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(whole)) as source, zipfile.ZipFile(buffer, "w") as target:
        target.writestr("X.npy", source.read("X.npy")[:-40])  # a member whose data ends early
    assert_names(upload(client, "x.npz", buffer.getvalue()), 422, "file", "ends after")


def test_a_csv_table_is_built_as_float32(settings, tmp_path):
    """Its peak is about the float32 table (plus a row's text), not a float64 table and its float32 copy."""
    X = (np.arange(2000 * 500) % 1000 / 8).reshape(2000, 500)
    path = tmp_path / "x.csv"
    path.write_text("\n".join(",".join(f"{v:g}" for v in row) for row in X) + "\n")
    tracemalloc.start()
    try:
        parsed = uploads.read_csv(path, settings, label_column=None)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert np.array_equal(parsed.X, X.astype(np.float32))
    assert peak < 1.5 * parsed.X.nbytes, f"peak {peak / 2**20:.1f} MiB for {parsed.X.nbytes / 2**20:.1f} MiB"
