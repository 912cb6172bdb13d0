"""Uploads: stream a multipart body to disk under a byte cap, then read the file with numpy only.

Accepted files (chosen by the file name's extension)::

    .npz          X (numeric, [n, ...]) and optionally y (integer labels, [n]); nothing else
    .npy          X only
    .csv          numeric columns, optional header row, labels in the column named by `label_column`
    .safetensors  model weights; only the header is read (8-byte little-endian length + JSON)

Arrays are always loaded with `allow_pickle=False`. Every rejection is an `InvalidInput` whose entry
names the field (`file`, `X`, `y`, a CSV row and column, a tensor), the bad value and what is allowed.
"""

from __future__ import annotations

import array
import contextlib
import csv
import hashlib
import json
import math
import os
import re
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
from fastapi import Request
from python_multipart.multipart import MultipartParser, parse_options_header

from service.api.errors import InvalidInput, PayloadTooLarge

FORMATS = (".npz", ".npy", ".csv", ".safetensors")
FORM_FIELDS = ("file", "label_column")
MAX_FIELD_BYTES = 1024
#: Room for the multipart framing and the small form fields when a Content-Length is checked up front.
MULTIPART_SLACK_BYTES = 64 * 1024
MAX_SAFETENSORS_HEADER = 100 * 1024**2
#: Bytes per element of each safetensors dtype.
SAFETENSORS_ITEMSIZE = {
    **dict.fromkeys(("BOOL", "U8", "I8", "F8_E4M3", "F8_E5M2"), 1),
    **dict.fromkeys(("U16", "I16", "F16", "BF16"), 2),
    **dict.fromkeys(("U32", "I32", "F32"), 4),
    **dict.fromkeys(("U64", "I64", "F64"), 8),
}


# ------------------------------------------------------------------------------------ receiving


@dataclass
class ReceivedUpload:
    """The `file` part saved at `path` (a temp file the caller removes) and the other form fields."""

    path: Path
    filename: str = ""
    size: int = 0
    fields: dict[str, str] = field(default_factory=dict)
    file_sha256: str = ""  # of the file's bytes, computed while they streamed in


def too_large(max_bytes: int, value: Any = None) -> PayloadTooLarge:
    msg = (
        f"the upload is larger than max_upload_bytes = {max_bytes} bytes (LELASTIC_MAX_UPLOAD_BYTES); "
        "send a smaller file"
    )
    entry = {"loc": ["body", "file"], "msg": msg, "input": value}
    entry["ctx"] = {"limit": "max_upload_bytes", "allowed": max_bytes, "env": "LELASTIC_MAX_UPLOAD_BYTES"}
    return PayloadTooLarge([entry])


class _FormReceiver:
    """python-multipart callbacks: the `file` part goes to `handle`, small fields to memory."""

    def __init__(self, upload: ReceivedUpload, handle: IO[bytes], max_bytes: int) -> None:
        self.upload, self.handle, self.max_bytes = upload, handle, max_bytes
        self.file_hash = hashlib.sha256()
        self.headers: dict[str, bytes] = {}
        self.header_name, self.header_value = b"", b""
        self.part, self.value, self.saw_file = "", b"", False

    def callbacks(self) -> dict[str, Any]:
        names = ("on_header_field", "on_header_value", "on_header_end", "on_headers_finished", "on_part_data")
        return {name: getattr(self, name) for name in (*names, "on_part_end")}

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        self.headers[self.header_name.decode("latin-1").lower()] = self.header_value
        self.header_name, self.header_value = b"", b""

    def on_headers_finished(self) -> None:
        _, disposition = parse_options_header(self.headers.get("content-disposition"))
        name = disposition.get(b"name", b"").decode("utf-8", "replace")
        if name not in FORM_FIELDS:
            raise InvalidInput.at(["body", name], f"unknown form field; allowed: {list(FORM_FIELDS)}", name)
        if name == "file":
            if self.saw_file:
                raise InvalidInput.at(["body", "file"], "send exactly one file", None)
            self.saw_file = True
            self.upload.filename = disposition.get(b"filename", b"").decode("utf-8", "replace")
        self.part, self.value = name, b""

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.part == "file":
            self.upload.size += end - start
            if self.upload.size > self.max_bytes:
                raise too_large(self.max_bytes, self.upload.filename)
            self.handle.write(data[start:end])
            self.file_hash.update(data[start:end])
        else:
            self.value += data[start:end]
            if len(self.value) > MAX_FIELD_BYTES:
                raise InvalidInput.at(["body", self.part], f"longer than {MAX_FIELD_BYTES} bytes", None)

    def on_part_end(self) -> None:
        if self.part != "file":
            self.upload.fields[self.part] = self.value.decode("utf-8", "replace")
        self.headers, self.part = {}, ""


async def receive_multipart(request: Request, *, dest_dir: Path, max_bytes: int) -> ReceivedUpload:
    """Stream the multipart body: the `file` part goes to a temp file in `dest_dir`, never into memory.

    Raises PayloadTooLarge once the file passes `max_bytes`, InvalidInput for a malformed form.
    """
    content_type, options = parse_options_header(request.headers.get("content-type"))
    if content_type != b"multipart/form-data" or not options.get(b"boundary"):
        msg = "must be multipart/form-data with a boundary and a `file` part"
        raise InvalidInput.at(["header", "content-type"], msg, request.headers.get("content-type"))
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes + MULTIPART_SLACK_BYTES:
        raise too_large(max_bytes, int(declared))
    fd, tmp = tempfile.mkstemp(dir=dest_dir, prefix=".upload-", suffix=".tmp")
    upload = ReceivedUpload(path=Path(tmp))
    try:
        with os.fdopen(fd, "wb") as handle:
            receiver = _FormReceiver(upload, handle, max_bytes)
            parser = MultipartParser(options[b"boundary"], receiver.callbacks())  # type: ignore[arg-type]
            async for chunk in request.stream():
                try:
                    parser.write(chunk)
                except (InvalidInput, PayloadTooLarge):
                    raise
                except Exception as exc:  # the parser's own errors: a malformed body
                    raise InvalidInput.at(["body"], f"malformed multipart body: {exc}", None) from exc
            parser.finalize()
        if not receiver.saw_file:
            msg = f"field required: a file ending in one of {list(FORMATS)}"
            raise InvalidInput.at(["body", "file"], msg, None)
        upload.file_sha256 = receiver.file_hash.hexdigest()
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return upload


def upload_format(filename: str) -> str:
    """The format (".npz", ...) a file name announces, or InvalidInput naming the allowed ones."""
    suffix = Path(filename).suffix.lower()
    if suffix not in FORMATS:
        raise InvalidInput.at(
            ["body", "file"],
            f"unsupported file type {suffix or '(none)'!r}; allowed: {list(FORMATS)}",
            filename,
        )
    return suffix


# -------------------------------------------------------------------------------------- arrays


@dataclass
class ParsedDataset:
    X: np.ndarray  # float32 (n, *shape)
    y: np.ndarray | None  # int64 (n,)


def read_npy(path: Path) -> ParsedDataset:
    try:
        X = np.load(path, allow_pickle=False, mmap_mode="r")
    except (ValueError, OSError, EOFError) as exc:
        raise InvalidInput.at(["body", "file"], f"not a readable .npy array without pickles: {exc}", None) from exc
    return checked_dataset(X, None)


def read_npz(path: Path, *, max_bytes: int) -> ParsedDataset:
    try:
        with np.load(path, allow_pickle=False) as archive:
            names = set(archive.files)
            unknown = sorted(names - {"X", "y"})
            if "X" not in names or unknown:
                raise InvalidInput.at(
                    ["body", "file"],
                    "a .npz must hold an array 'X' and optionally 'y', nothing else",
                    sorted(names),
                )
            expanded = sum(info.file_size for info in archive.zip.infolist())
            if expanded > 4 * max_bytes:
                raise InvalidInput.at(
                    ["body", "file"],
                    f"the arrays expand to {expanded} bytes; at most {4 * max_bytes} are allowed",
                    None,
                )
            return checked_dataset(archive["X"], archive["y"] if "y" in names else None)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise InvalidInput.at(["body", "file"], f"not a readable .npz archive without pickles: {exc}", None) from exc


def checked_dataset(X: np.ndarray, y: np.ndarray | None) -> ParsedDataset:
    """X as float32 and y as int64 after every check (dtype, shape, finiteness, label length)."""
    if X.dtype.kind not in "biuf":
        raise InvalidInput.at(
            ["body", "X"],
            f"X must be a numeric array (bool, int or float); got dtype {X.dtype.str!r}",
            str(X.dtype),
        )
    if X.ndim < 2 or X.shape[0] < 2 or math.prod(X.shape[1:]) == 0:
        raise InvalidInput.at(
            ["body", "X"],
            "X must have shape [n, ...] with n >= 2 examples of at least one value each",
            list(X.shape),
        )
    X32 = np.asarray(X, dtype=np.float32)
    bad = np.argwhere(~np.isfinite(X32))
    if bad.size:
        where = [int(i) for i in bad[0]]
        raise InvalidInput.at(
            ["body", "X", *where],
            f"X has {len(bad)} non-finite value(s) (NaN or ±Inf, or "
            "too large for float32); only finite numbers are allowed",
            repr(float(X[tuple(where)])),
        )
    if y is None:
        return ParsedDataset(X32, None)
    if y.ndim != 1 or y.shape[0] != X.shape[0]:
        raise InvalidInput.at(
            ["body", "y"], f"y must have shape [{X.shape[0]}] (one label per row of X)", list(y.shape)
        )
    if y.dtype.kind not in "iuf" or (y.dtype.kind == "f" and not np.all(np.isfinite(y))):
        raise InvalidInput.at(["body", "y"], f"y must hold integer labels; got dtype {y.dtype.str!r}", str(y.dtype))
    if y.dtype.kind == "f" and np.any(y != np.round(y)):
        first = int(np.flatnonzero(y != np.round(y))[0])
        raise InvalidInput.at(["body", "y", first], "y must hold integer labels", float(y[first]))
    if np.any(np.abs(y.astype(np.float64)) > 2**62):
        raise InvalidInput.at(["body", "y"], "labels must fit in a 64-bit integer", None)
    return ParsedDataset(X32, y.astype(np.int64))


# ------------------------------------------------------------------------------------------ csv


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def read_csv(path: Path, *, label_column: str | None) -> ParsedDataset:
    """Numeric CSV, read row by row. The first row is a header when none of its cells is a number.

    `label_column` is a header name, or a 0-based column number when there is no header.
    """
    values = array.array("d")
    names: list[str] = []
    label_index: int | None = None
    rows = 0
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            for line, row in enumerate(csv.reader(handle), start=1):
                if not any(cell.strip() for cell in row):
                    continue
                if not names:
                    is_header = all(_number(cell) is None for cell in row)
                    names = [cell.strip() for cell in row] if is_header else [str(i) for i in range(len(row))]
                    label_index = _label_index(names, label_column)
                    if is_header:
                        continue
                if len(row) != len(names):
                    msg = f"row {line} has {len(row)} columns; the file has {len(names)}"
                    raise InvalidInput.at(["body", "file", f"row {line}"], msg, len(row))
                for c, cell in enumerate(row):
                    number = _number(cell)
                    if number is None or not math.isfinite(number):
                        msg = f"row {line}, column {names[c]!r}: expected a finite number"
                        raise InvalidInput.at(["body", "file", f"row {line}", f"column {names[c]}"], msg, cell)
                    if c == label_index and number != round(number):
                        msg = f"row {line}, column {names[c]!r}: labels must be integers"
                        raise InvalidInput.at(["body", "file", f"row {line}", f"column {names[c]}"], msg, cell)
                    values.append(number)
                rows += 1
    except (UnicodeDecodeError, csv.Error) as exc:
        raise InvalidInput.at(["body", "file"], f"not a UTF-8 CSV file: {exc}", None) from exc
    table = np.frombuffer(values, dtype=np.float64).reshape(rows, max(len(names), 1))
    if label_index is None:
        return checked_dataset(table, None)
    return checked_dataset(np.delete(table, label_index, axis=1), table[:, label_index])


def _label_index(names: list[str], label_column: str | None) -> int | None:
    if label_column is None:
        return None
    if label_column not in names:
        raise InvalidInput.at(["body", "label_column"], f"no such column; allowed: {names}", label_column)
    return names.index(label_column)


# -------------------------------------------------------------------------------- safetensors


def read_safetensors_header(path: Path) -> dict[str, dict[str, Any]]:
    """Name → {"dtype", "shape"} of every tensor, after checking the header against the file size."""
    total = path.stat().st_size

    def bad(msg: str, value: Any = None) -> InvalidInput:
        return InvalidInput.at(["body", "file"], f"not a valid .safetensors file: {msg}", value)

    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise bad("shorter than its 8-byte header length", total)
        length = int.from_bytes(prefix, "little")
        if length > MAX_SAFETENSORS_HEADER or length > total - 8:
            raise bad(f"header length {length} exceeds the file ({total} bytes) or the 100 MB header limit", length)
        raw = handle.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise bad(f"the header is not UTF-8 JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise bad("the header must be a JSON object", type(header).__name__)
    header.pop("__metadata__", None)
    if not header:
        raise bad("it holds no tensors")
    tensors: dict[str, dict[str, Any]] = {}
    spans = []
    for name, entry in header.items():
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise bad(f"tensor {name!r} needs exactly dtype, shape and data_offsets", entry)
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in SAFETENSORS_ITEMSIZE:
            raise bad(f"tensor {name!r} has dtype {dtype!r}; allowed: {sorted(SAFETENSORS_ITEMSIZE)}", dtype)
        if not (isinstance(shape, list) and all(type(s) is int and s >= 0 for s in shape)):
            raise bad(f"tensor {name!r} has an invalid shape", shape)
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
            raise bad(f"tensor {name!r} has invalid data_offsets", offsets)
        if offsets[1] - offsets[0] != math.prod(shape) * SAFETENSORS_ITEMSIZE[dtype]:
            raise bad(f"tensor {name!r}: data_offsets {offsets} do not match shape {shape} of {dtype}", offsets)
        spans.append((offsets[0], offsets[1], name))
        tensors[name] = {"dtype": dtype, "shape": shape}
    position = 0
    for begin, end, name in sorted(spans):
        if begin != position:
            raise bad(f"tensor {name!r} starts at byte {begin}, expected {position} (no gaps or overlaps)", begin)
        position = end
    if position != total - 8 - length:
        raise bad(f"the tensors take {position} bytes but the file holds {total - 8 - length} after the header")
    return tensors


def safe_name(filename: str) -> str:
    """The file name without any directory part or control characters, at most 200 characters."""
    name = re.sub(r"[\x00-\x1f\x7f]", "", filename.replace("\\", "/").rsplit("/", 1)[-1])
    return name[:200] or "upload"
