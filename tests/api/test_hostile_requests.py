"""Crafted requests against the API's edge: each gets a 4xx naming the problem (never a 5xx or a reset
connection) and costs no more than its bound. Real Valkey; raw sockets against a real uvicorn where the
order of bytes on the wire matters."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import socket
import struct
import time
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from service.api import auth
from service.api.errors import Conflict, InvalidInput
from service.api.usecases import datasets as dataset_usecases
from service.api.usecases import submit as submit_usecases
from service.contract import jobstate, records
from service.contract.spec import JobSpec
from service.contract.storage import DataDir
from tests.factories import (
    DIGITS_3_5,
    app_client,
    assert_names,
    blobs_npz,
    csv_bytes,
    live_api,
    npy_bytes,
    npz_bytes,
    safetensors_bytes,
    submit,
    upload,
)

# ----------------------------------------------------------------------------------- live server


def raw_exchange(port: int, head: bytes, body: bytes = b"", *, timeout: float = 10.0) -> tuple[int, bytes]:
    """Send `head` (and `body`) on a fresh connection; (status, response bytes) of what comes back."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head + body)
        data = b""
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            while b"\r\n\r\n" not in data or len(data) < data.find(b"\r\n\r\n") + 4 + _length(data):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
    return int(data.split(b" ", 2)[1]), data


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":", 1)[1])
    return 0


# ----------------------------------------------------------------------------- key before body


def test_a_request_without_a_valid_key_is_refused_before_its_body_is_read(settings, tmp_path):
    keys_file = tmp_path / "keys"
    key = auth.create_key(keys_file, "alice")
    with live_api(settings.model_copy(update={"api_keys_file": keys_file}), log_config=None, access_log=True) as port:
        # 200 MB announced, not one byte of it sent: the answer comes anyway.
        head = (
            b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 200000000\r\n\r\n"
        )
        status, data = raw_exchange(port, head)
        assert status == 401 and b"missing API key" in data
        head = head.replace(b"Host: x\r\n", b"Host: x\r\nX-API-Key: wrong\r\n")
        status, data = raw_exchange(port, head)
        assert status == 401 and b"unknown API key" in data
        # With the key: the declared length is over max_json_body_bytes.
        head = head.replace(b"X-API-Key: wrong", f"X-API-Key: {key}".encode())
        status, data = raw_exchange(port, head)
        assert status == 413 and b"LELASTIC_MAX_JSON_BODY_BYTES" in data
        # No Content-Length (chunked): counted as it streams in, refused past the limit.
        chunked = head.replace(b"Content-Length: 200000000", b"Transfer-Encoding: chunked")
        piece = b" " * 65536
        body = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for _ in range(40))
        status, data = raw_exchange(port, chunked, body)
        assert status == 413 and b"max_json_body_bytes = 1048576" in data


def test_a_body_under_the_limit_still_works_and_over_it_is_413(settings):
    with app_client(settings, max_json_body_bytes=4096) as client:
        assert submit(client).status_code == 202
        padded = json.dumps({**DIGITS_3_5, "name": "x" * 5000}).encode()

        def pieces() -> Iterator[bytes]:
            yield from (padded[i : i + 1000] for i in range(0, len(padded), 1000))

        response = client.post("/v1/jobs", content=pieces(), headers={"Content-Type": "application/json"})
        detail = assert_names(response, 413, "max_json_body_bytes = 4096", "LELASTIC_MAX_JSON_BODY_BYTES")
        assert detail[0]["ctx"]["limit"] == "max_json_body_bytes"


def test_error_bodies_echo_at_most_a_short_prefix_of_a_bad_value(client):
    response = client.post("/v1/jobs", json={**DIGITS_3_5, "primary": {"labels": list(range(20000))}, "x": "y" * 9000})
    assert response.status_code == 422
    assert len(response.content) < 4000
    for entry in response.json()["detail"]:
        assert len(json.dumps(entry["input"])) <= 210, entry


@pytest.mark.parametrize("value", ["1", True, 1.0])
def test_the_spec_does_not_coerce_types(client, value):
    assert_names(submit(client, seed=value), 422, "seed")


def test_a_lone_surrogate_in_the_spec_is_422_naming_it(client):
    body = json.dumps(DIGITS_3_5).replace('"labels": [3, 5]', '"labels": ["\\ud800", 5]')
    response = client.post("/v1/jobs", content=body, headers={"Content-Type": "application/json"})
    assert_names(response, 422, "primary", "labels", "\\\\ud800")


@pytest.mark.parametrize(
    ("body", "headers", "fragments"),
    [
        (b'{"a":' * 50_000 + b"1" + b"}" * 50_000, {}, ["nests", "too deeply"]),
        (b"[" * 100_000 + b"]" * 100_000, {}, ["nests", "too deeply"]),
        (b"\x1f\x8b\x08\x00" + b"\0" * 20, {"Content-Encoding": "gzip"}, ["not UTF-8", "Content-Encoding 'gzip'"]),
    ],
    ids=["deep-object", "deep-array", "gzip"],
)
def test_a_body_that_is_not_json_text_is_422_naming_why(client, body, headers, fragments):
    response = client.post("/v1/jobs", content=body, headers={"Content-Type": "application/json", **headers})
    detail = assert_names(response, 422, "cannot be read as JSON", *fragments)
    assert detail[0]["loc"] == ["body"]


# ----------------------------------------------------------------------------------- uploads


def _bomb(rows: int, cols: int) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, X=np.zeros((rows, cols), dtype=np.uint8))
    return buffer.getvalue()


def test_a_zip_bomb_is_refused_from_its_header_before_decompressing(settings):
    bomb = _bomb(2000, 5000)  # 10 MB of zeros in ~10 kB; 40 MB as float32
    assert len(bomb) < 100_000
    with app_client(settings, max_dataset_bytes=4 * 1024**2) as client:
        response = upload(client, "bomb.npz", bomb)
        detail = assert_names(response, 422, "X as float32 = 40000000 bytes", "LELASTIC_MAX_DATASET_BYTES")
        assert detail[0]["ctx"]["limit"] == "max_dataset_bytes"
        assert client.get("/v1/datasets").json()["count"] == 0
        assert not list((settings.data_dir / "datasets").glob("*/*"))


def test_string_labels_are_refused_from_their_header_before_decompressing(settings):
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<U1000000", "fortran_order": False, "shape": (10,)})
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("X.npy", npy_bytes(np.ones((10, 3))))
        with archive.open("y.npy", "w") as member:  # 40 MB of labels, 40 kB deflated
            member.write(header.getvalue())
            for _ in range(40):
                member.write(bytes(1024**2))
    assert len(buffer.getvalue()) < 100_000
    with app_client(settings) as client:
        assert_names(upload(client, "bomb.npz", buffer.getvalue()), 422, '"y"', "1000000 characters", "at most 200")
        assert client.get("/v1/datasets").json()["count"] == 0
    small = npz_bytes(X=np.ones((1000, 1)), y=np.array([f"{i:0200d}" for i in range(1000)]))
    with app_client(settings, max_dataset_bytes=100_000) as client:
        assert_names(upload(client, "y.npz", small), 422, "y = 800000 bytes", "LELASTIC_MAX_DATASET_BYTES")


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("members", "fragments"),
    [
        ({"X": npy_bytes(np.eye(3))}, ["'X' (member X.npy)"]),
        ({"X.npy": b"not an npy file at all"}, ["X is not an .npy array"]),
        ({"X.npy": npy_bytes(np.eye(3)), "y.npy": b"\x93NUMPY\x03\x00"}, ["y is not an .npy array"]),
        ({"X.npy": npy_bytes(np.eye(3)), "y.npy": npy_bytes(np.arange(5))}, ["y must have shape [3]"]),
    ],
    ids=["no-suffix", "not-npy", "bad-version", "y-length"],
)
def test_malformed_npz_members_are_422(client, members, fragments):
    assert_names(upload(client, "d.npz", _zip(members)), 422, *fragments)


def test_csv_columns_are_counted_on_the_first_line_and_long_lines_refused(settings):
    with app_client(settings, max_features=10) as client:
        wide = b",".join([b"1"] * 5000) + b"\n"
        assert_names(upload(client, "wide.csv", wide * 3), 422, "columns = 5000", "LELASTIC_MAX_FEATURES")
        long_line = b"1,2\n3,4\n" + b"5" * 2000 + b",6\n"
        assert_names(upload(client, "long.csv", long_line), 422, "longer than 704 bytes")
        assert upload(client, "ok.csv", csv_bytes([[1, 2], [3, 4]])).status_code == 201


def test_csv_rows_stop_at_max_dataset_examples(settings):
    with app_client(settings, max_dataset_examples=5) as client:
        response = upload(client, "rows.csv", csv_bytes([[i, i] for i in range(50)]))
        assert_names(response, 422, "n = 6", "max_dataset_examples")


def test_each_tenant_has_a_storage_quota(settings, tmp_path):
    keys_file = tmp_path / "keys"
    alice, bob = auth.create_key(keys_file, "alice"), auth.create_key(keys_file, "bob")
    data = npz_bytes(X=np.ones((64, 8), dtype=np.float32))  # 2 kB stored
    with app_client(settings, api_keys_file=keys_file, max_tenant_storage_bytes=5000) as client:
        as_alice, as_bob = {"X-API-Key": alice}, {"X-API-Key": bob}
        first = upload(client, "a.npz", data, headers=as_alice)
        assert upload(client, "b.npz", data, headers=as_alice).status_code == 201
        detail = assert_names(
            upload(client, "c.npz", data, headers=as_alice), 413, "max_tenant_storage_bytes = 5000", "delete datasets"
        )
        assert detail[0]["ctx"]["env"] == "LELASTIC_MAX_TENANT_STORAGE_BYTES"
        assert upload(client, "d.npz", data, headers=as_bob).status_code == 201  # bob has his own quota
        assert client.delete(f"/v1/datasets/{first.json()['id']}", headers=as_alice).status_code == 204
        assert upload(client, "c.npz", data, headers=as_alice).status_code == 201


def _safetensors(header: dict, data: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def test_safetensors_headers_are_bounded_and_checked(settings):
    with app_client(settings, max_weight_tensors=100, max_safetensors_header_bytes=64 * 1024) as client:
        many = {f"t{i}": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]} for i in range(101)}
        assert_names(upload(client, "w.safetensors", _safetensors(many)), 422, "tensors = 101", "max_weight_tensors")
        huge = {"__metadata__": {"pad": "x" * 70_000}, "t": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}}
        assert_names(upload(client, "w.safetensors", _safetensors(huge)), 422, "LELASTIC_MAX_SAFETENSORS_HEADER_BYTES")
        nested = b'{"a":' * 2000 + b"1" + b"}" * 2000
        deep = struct.pack("<Q", len(nested)) + nested
        assert_names(upload(client, "w.safetensors", deep), 422, "nests too deeply")
        bad_meta = {"__metadata__": {"k": 1}, "t": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}
        body = _safetensors(bad_meta, b"\0" * 4)
        assert_names(upload(client, "w.safetensors", body), 422, "__metadata__ must map strings to strings")
        for dtype, value in (("F32", np.float32(np.nan).tobytes()), ("F16", np.float16(np.inf).tobytes())):
            tensor = {"t": {"dtype": dtype, "shape": [2], "data_offsets": [0, 2 * len(value)]}}
            response = upload(client, "w.safetensors", _safetensors(tensor, b"\0" * len(value) + value))
            assert_names(response, 422, "tensor 't' holds NaN or", "only finite weights")
        good = safetensors_bytes({"w": ("F32", [2, 2])})
        assert upload(client, "w.safetensors", good).status_code == 201


# --------------------------------------------------------------------------------- multipart


def test_a_malformed_boundary_is_422(client):
    for content_type in ("multipart/form-data; boundary=\x01\x02junk;;", "multipart/form-data; boundary=" + "b" * 80):
        response = client.post("/v1/datasets", content=b"--x\r\n", headers={"Content-Type": content_type})
        assert_names(response, 422, "content-type", "boundary")


def test_a_multipart_body_cut_before_its_closing_boundary_is_refused(client):
    boundary = "cut0123"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="d.csv"\r\n'
        "Content-Type: text/csv\r\n\r\n"
    ).encode()
    body = head + csv_bytes([[1, 2], [3, 4], [5, 6]])
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    assert_names(client.post("/v1/datasets", content=body, headers=headers), 422, "closing boundary")
    whole = body + f"\r\n--{boundary}--\r\n".encode()
    assert client.post("/v1/datasets", content=whole, headers=headers).status_code == 201
    assert client.get("/v1/datasets").json()["count"] == 1


# -------------------------------------------------------------------------- ids and cursors


def test_ids_cursors_and_event_ids_are_validated_strictly(client, redis_conn):
    job_id = submit(client).json()["id"]
    for path in (f"/v1/jobs/{job_id}:events", f"/v1/jobs/{job_id}%20", "/v1/jobs/%D9%A1", "/v1/datasets/x:y"):
        assert_names(client.get(path), 404, "with this id", "32 lowercase hex digits")
    for cursor in ("1%20", "1_0", "%D9%A1", "nan", "1e999"):
        assert_names(client.get(f"/v1/jobs?cursor={cursor}"), 422, "cursor")
    for event_id in ("99999999999999999999-0", "\u0661-0", "1-0\n"):
        response = client.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": event_id.encode("utf-8")})
        assert_names(response, 422, "last-event-id")
    assert client.get("/readyz").status_code in (200, 503)
    unknown = client.get(f"/v1/jobs/{'0' * 32}")
    assert unknown.status_code == 404
    assert unknown.json()["detail"][0]["msg"] == client.get("/v1/jobs/x:events").json()["detail"][0]["msg"]


def test_another_tenants_upload_reads_like_one_that_does_not_exist(keyed):
    client, alice, bob, _ = keyed
    weights = upload(client, "w.safetensors", safetensors_bytes({"w": ("F32", [2])}), headers={"X-API-Key": alice})
    dataset = upload(client, "d.npz", blobs_npz(), headers={"X-API-Key": alice})
    for theirs, missing in ((weights.json()["id"], "f" * 32), (dataset.json()["id"], "e" * 32)):
        answers = []
        for candidate in (theirs, missing):
            spec = {**DIGITS_3_5, "dataset": candidate}
            spec_w = {**DIGITS_3_5, "weights": {"source": "upload", "weights": candidate}}
            for body in (spec, spec_w):
                response = client.post("/v1/jobs", json=body, headers={"X-API-Key": bob})
                assert response.status_code == 422
                answers.append([e["msg"] for e in response.json()["detail"]])
        assert answers[:2] == answers[2:], answers


# ------------------------------------------------------------------------------- delete race


def test_deleting_a_dataset_never_races_a_job_that_uses_it(settings, redis_conn):
    data_dir = DataDir(settings.data_dir)
    data_dir.root.mkdir(parents=True, exist_ok=True)
    outcomes = {"both": 0, "job": 0, "delete": 0}
    with app_client(settings) as client:
        for _ in range(30):
            dataset_id = upload(client, "d.npz", blobs_npz()).json()["id"]
            spec = JobSpec.model_validate({**DIGITS_3_5, "dataset": dataset_id, "primary": {"labels": [0, 1]}})

            def job(spec: JobSpec = spec) -> bool:
                try:
                    submit_usecases.submit_job(redis_conn, data_dir, settings, spec, records.DEFAULT_TENANT)
                    return True
                except InvalidInput:
                    return False

            def delete(dataset_id: str = dataset_id) -> bool:
                try:
                    dataset_usecases.delete_dataset(redis_conn, data_dir, dataset_id, records.DEFAULT_TENANT)
                    return True
                except Conflict:
                    return False

            with ThreadPoolExecutor(2) as pool:
                submitted, deleted = pool.submit(job), pool.submit(delete)
                ok_job, ok_delete = submitted.result(), deleted.result()
            outcomes["both" if ok_job and ok_delete else "job" if ok_job else "delete"] += 1
            if ok_job:  # cancel it so the next round's jobs are the only users
                for record in records.list_jobs(redis_conn, limit=200)[0]:
                    if record.status == "queued":
                        jobstate.mark_canceled(redis_conn, record.id)
    assert outcomes["both"] == 0, outcomes


# --------------------------------------------------------------------------------- keys file


def test_a_malformed_keys_file_line_keeps_the_last_good_keys(settings, tmp_path, caplog):
    keys_file = tmp_path / "keys"
    alice = auth.create_key(keys_file, "alice")
    with app_client(settings, api_keys_file=keys_file) as client:
        assert client.get("/v1/jobs", headers={"X-API-Key": alice}).status_code == 200
        with keys_file.open("a") as handle:
            handle.write("this line is not a key\n")
        with caplog.at_level(logging.ERROR, logger="lelastic.api"):
            assert client.get("/v1/jobs", headers={"X-API-Key": alice}).status_code == 200
            assert client.get("/v1/jobs", headers={"X-API-Key": "other"}).status_code == 401
        assert f"{keys_file}:2" in caplog.text and "not a key" not in caplog.text


def test_a_keys_file_malformed_from_the_start_serves_its_good_lines(settings, tmp_path):
    keys_file = tmp_path / "keys"
    keys_file.write_text("garbage\n")
    alice = auth.create_key(keys_file, "alice")
    with app_client(settings, api_keys_file=keys_file) as client:
        assert client.get("/v1/jobs", headers={"X-API-Key": alice}).status_code == 200


# ------------------------------------------------------------------------- HEAD, Range, logs


def _finished_job_with_artifact(redis_conn, data_dir: Path) -> str:
    record = records.create_job(redis_conn, spec=DIGITS_3_5)
    path = DataDir(data_dir).artifact(record.id, "similarity.npy")
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.eye(50, dtype=np.float32))
    jobstate.mark_running(redis_conn, record.id)
    jobstate.mark_succeeded(redis_conn, record.id, {})
    return record.id


def test_head_is_answered_wherever_get_is(client, settings, redis_conn):
    job_id = _finished_job_with_artifact(redis_conn, settings.data_dir)
    for path in ("/healthz", "/v1/jobs", f"/v1/jobs/{job_id}", f"/v1/jobs/{job_id}/artifacts/similarity.npy"):
        got, head = client.get(path), client.head(path)
        assert head.status_code == got.status_code == 200, path
        assert head.content == b"" and head.headers["content-length"] == got.headers["content-length"], path
    assert client.head(f"/v1/jobs/{job_id}/events").status_code == 200  # headers only; the stream is not run


def test_malformed_range_headers_are_ignored(client, settings, redis_conn):
    job_id = _finished_job_with_artifact(redis_conn, settings.data_dir)
    url = f"/v1/jobs/{job_id}/artifacts/similarity.npy"
    whole = client.get(url).content
    for bad in ("bytes", "bytes=", "bytes=x-y", "bytes=5-2", "items=0-1", "bytes=--"):
        response = client.get(url, headers={"Range": bad})
        assert response.status_code == 200 and response.content == whole, bad
    part = client.get(url, headers={"Range": "bytes=0-9"})
    assert part.status_code == 206 and part.content == whole[:10]
    assert client.get(url, headers={"Range": f"bytes={len(whole) + 10}-"}).status_code == 416


def test_no_query_string_reaches_a_log(settings, caplog):
    access = logging.getLogger("uvicorn.access")
    level = access.level
    with caplog.at_level(logging.INFO), live_api(settings, log_config=None, access_log=True) as port:
        access.setLevel(logging.INFO)  # as a deployment with uvicorn's access log on would have it
        try:
            head = b"GET /v1/jobs?cursor=secret-token-123&limit=5 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            status, _ = raw_exchange(port, head)
            assert status == 422
            time.sleep(0.2)
        finally:
            access.setLevel(level)
    lines = [record.getMessage() for record in caplog.records]
    assert any(r.name == "uvicorn.access" and "/v1/jobs" in r.getMessage() for r in caplog.records), lines
    assert not any("secret-token-123" in line for line in lines), lines
