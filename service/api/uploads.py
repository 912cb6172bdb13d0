"""Uploads: stream a multipart body to disk under a byte cap, then read the file with numpy only.

Accepted files (chosen by the file name's extension)::

    .npz          X (numeric, [n, ...]) and optionally y (labels, [n]: integers or strings); nothing else
    .npy          X only
    .csv          numeric columns, optional header row, labels (integers or names) in the column named by
                  `label_column`, or in a column named label, y, class or target when none is named
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
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
from fastapi import Request
from python_multipart.multipart import MultipartParser, parse_options_header

from service.api import limits
from service.api.errors import InvalidInput, PayloadTooLarge
from service.contract.settings import Settings
from service.contract.spec import MAX_LABEL_CHARS

FORMATS = (".npz", ".npy", ".csv", ".safetensors")
FORM_FIELDS = ("file", "label_column")
MAX_FIELD_BYTES = 1024
#: Room for the multipart framing and the small form fields when a Content-Length is checked up front.
MULTIPART_SLACK_BYTES = 64 * 1024
#: A multipart boundary (RFC 2046: 1 to 70 characters of this set, not ending in a space).
BOUNDARY_PATTERN = re.compile(rb"[0-9A-Za-z'()+_,./:=? -]{0,69}[0-9A-Za-z'()+_,./:=?-]")
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
        self.parser: MultipartParser | None = None
        self.ended = False  # the closing boundary was seen

    def callbacks(self) -> dict[str, Any]:
        names = ("on_header_field", "on_header_value", "on_header_end", "on_headers_finished", "on_part_data")
        return {name: getattr(self, name) for name in (*names, "on_part_end", "on_end")}

    def on_end(self) -> None:
        self.ended = True

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
    msg = "must be multipart/form-data with a boundary (1 to 70 token characters) and a `file` part"
    try:
        content_type, options = parse_options_header(request.headers.get("content-type"))
    except Exception as exc:  # the parser's own errors: a malformed header
        raise InvalidInput.at(["header", "content-type"], msg, request.headers.get("content-type")) from exc
    boundary = options.get(b"boundary", b"")
    if content_type != b"multipart/form-data" or not BOUNDARY_PATTERN.fullmatch(boundary):
        raise InvalidInput.at(["header", "content-type"], msg, request.headers.get("content-type"))
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes + MULTIPART_SLACK_BYTES:
        raise too_large(max_bytes, int(declared))
    fd, tmp = tempfile.mkstemp(dir=dest_dir, prefix=".upload-", suffix=".tmp")
    upload = ReceivedUpload(path=Path(tmp))
    try:
        with os.fdopen(fd, "wb") as handle:
            receiver = _FormReceiver(upload, handle, max_bytes)
            async for chunk in request.stream():
                try:
                    if receiver.parser is None:
                        receiver.parser = MultipartParser(boundary, receiver.callbacks())  # type: ignore[arg-type]
                    receiver.parser.write(chunk)
                except (InvalidInput, PayloadTooLarge):
                    raise
                except Exception as exc:  # the parser's own errors: a malformed body
                    raise InvalidInput.at(["body"], f"malformed multipart body: {str(exc)[:200]}", None) from exc
        if not receiver.ended:
            msg = "the multipart body ends before its closing boundary (it was cut off): send it whole"
            raise InvalidInput.at(["body"], msg, None)
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


#: Header names (any case) of a CSV column taken as the labels when no `label_column` is given.
LABEL_COLUMN_NAMES = ("label", "y", "class", "target")


@dataclass
class ParsedDataset:
    X: np.ndarray  # float32 (n, *shape)
    y: np.ndarray | None  # int64 (n,)
    #: String labels' original names, by integer label (y indexes into it); None for integer labels.
    label_names: list[str] | None = None
    #: The CSV column the labels came from.
    label_column: str | None = None
    #: What the upload should tell the client (e.g. a label column found by its name).
    notes: list[str] = field(default_factory=list)


def read_npy(path: Path, settings: Settings) -> ParsedDataset:
    """X from a .npy file, after its header passed `check_header` (nothing is decoded before)."""
    with open(path, "rb") as handle:
        shape, dtype = npy_header(handle, "X")
    check_header("X", shape, dtype, settings)
    try:
        X = np.load(path, allow_pickle=False, mmap_mode="r")
    except (ValueError, OSError, EOFError) as exc:
        raise InvalidInput.at(["body", "file"], f"not a readable .npy array without pickles: {exc}", None) from exc
    return checked_dataset(X, None)


def read_npz(path: Path, settings: Settings) -> ParsedDataset:
    """X (and y) from a .npz archive. Every member must be an .npy file (`X.npy`, optionally `y.npy`)
    whose header passes `check_header` before any member is decompressed."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.namelist()
            names = [m.removesuffix(".npy") for m in members]
            if any(not m.endswith(".npy") for m in members) or set(names) - {"X", "y"} or "X" not in names:
                msg = "a .npz must hold an array 'X' (member X.npy) and optionally 'y' (y.npy), nothing else"
                raise InvalidInput.at(["body", "file"], msg, sorted(names)[:10])
            if len(set(names)) != len(names):
                raise InvalidInput.at(["body", "file"], "a .npz member appears twice", members[:10])
            headers = {}
            for member, name in zip(members, names, strict=True):
                with archive.open(member) as stream:
                    headers[name] = npy_header(stream, name)
            check_header("X", *headers["X"], settings)
            if "y" in headers:
                check_header("y", *headers["y"], settings, n=headers["X"][0][0])
            arrays = {}
            for member, name in zip(members, names, strict=True):
                with archive.open(member) as stream:
                    arrays[name] = read_as_float32(stream) if name == "X" else read_npy_array(stream)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError) as exc:
        raise InvalidInput.at(["body", "file"], f"not a readable .npz archive without pickles: {exc}", None) from exc
    return checked_dataset(arrays["X"], arrays.get("y"))


#: .npy format versions read (3.0 differs only in allowing UTF-8 field names, which no numeric array has).
NPY_VERSIONS = ((1, 0), (2, 0))
#: The largest finite float32, in which every dataset is stored.
FLOAT32_MAX = float(np.finfo(np.float32).max)
#: Bytes of an array's data decoded at a time when it is converted to float32 (`read_as_float32`).
DECODE_CHUNK_BYTES = 16 * 2**20


def read_npy_array(stream: IO[bytes]) -> np.ndarray:
    """The .npy array at the start of `stream`, read whole in its own dtype (never a pickle)."""
    return np.lib.format.read_array(stream, allow_pickle=False)


def read_as_float32(stream: IO[bytes]) -> np.ndarray:
    """The .npy array at the start of `stream` (header already checked), a numeric one in C order as float32
    read a chunk of `DECODE_CHUNK_BYTES` at a time: a float64 X of S float32 bytes then needs S bytes, not
    the 3 S of the float64 array plus its float32 copy. Other arrays are read whole (`read_npy_array`);
    `checked_dataset` refuses what is not numeric. Values beyond float32's range become ±inf, which
    `checked_dataset` refuses too."""
    shape, fortran_order, dtype = read_npy_header(stream)
    if fortran_order or dtype.kind not in "biuf" or dtype == np.float32 or len(shape) < 2:
        stream.seek(0)
        return read_npy_array(stream)
    out = np.empty(shape, dtype=np.float32)
    rows = out.reshape(shape[0], -1)
    row_bytes = max(1, rows.shape[1] * dtype.itemsize)
    step = max(1, DECODE_CHUNK_BYTES // row_bytes)
    for start in range(0, shape[0], step):
        stop = min(shape[0], start + step)
        data = stream.read((stop - start) * row_bytes)
        if len(data) != (stop - start) * row_bytes:
            raise ValueError(f"the array's data ends after {start * row_bytes + len(data)} bytes")
        with np.errstate(over="ignore"):
            rows[start:stop] = np.frombuffer(data, dtype=dtype).reshape(stop - start, -1)
    return out


def read_npy_header(stream: IO[bytes]) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran_order, dtype) from the header of the .npy data at the start of `stream`, which is left
    where the array's data starts; ValueError for a format version not in NPY_VERSIONS."""
    version = np.lib.format.read_magic(stream)
    if version not in NPY_VERSIONS:
        raise ValueError(f"format version {version[0]}.{version[1]}; allowed: 1.0, 2.0")
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran_order, dtype = read(stream)
    return tuple(int(s) for s in shape), bool(fortran_order), dtype


def npy_header(stream: IO[bytes], name: str) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) from the header of the .npy data at the start of `stream`; nothing else is read.
    InvalidInput naming `name` when it is not an .npy header."""
    try:
        shape, _, dtype = read_npy_header(stream)
    except (ValueError, OSError, EOFError, SyntaxError, TypeError, zipfile.BadZipFile, zlib.error) as exc:
        raise InvalidInput.at(["body", "file", name], f"{name} is not an .npy array: {exc}", None) from exc
    return shape, dtype


def check_header(
    name: str, shape: tuple[int, ...], dtype: np.dtype, settings: Settings, *, n: int | None = None
) -> None:
    """Refuse an array by its header alone: X numeric [n, ...] within max_dataset_examples, max_features and
    max_dataset_bytes (as float32); y numeric [n]."""
    if dtype.hasobject:
        msg = f"{name} holds Python objects, which would need a pickle; only numeric arrays are read"
        raise InvalidInput.at(["body", "file", name], msg, str(dtype))
    if dtype.kind not in ("biuf" if name == "X" else "iufUS") or dtype.fields is not None:
        allowed = "bool, int or float" if name == "X" else "int, float or string labels"
        msg = f"{name} must be a numeric array ({allowed}); got dtype {dtype.str!r}"
        raise InvalidInput.at(["body", name], msg, str(dtype))
    if name == "y":
        if shape != (n,):
            raise InvalidInput.at(["body", "y"], f"y must have shape [{n}] (one label per row of X)", list(shape))
        check_label_size(dtype, math.prod(shape), settings)
        return
    check_dataset_size(shape, settings)


def check_label_size(dtype: np.dtype, n: int, settings: Settings) -> None:
    """Refuse y by its header: string labels of at most MAX_LABEL_CHARS characters, and y within
    max_dataset_bytes once decoded (before a byte of it is decompressed)."""
    chars = dtype.itemsize // 4 if dtype.kind == "U" else dtype.itemsize
    if dtype.kind in "US" and chars > MAX_LABEL_CHARS:
        msg = (
            f"string labels of {chars} characters (dtype {dtype.str!r}); label names are at most "
            f"{MAX_LABEL_CHARS} characters"
        )
        raise InvalidInput.at(["body", "y"], msg, dtype.str)
    decoded = n * dtype.itemsize
    if decoded > settings.max_dataset_bytes:
        found = limits.limit_issue(
            ["body", "file", "y"], "y", decoded, "max_dataset_bytes", settings.max_dataset_bytes, " bytes"
        )
        raise InvalidInput([found])


def check_dataset_size(shape: tuple[int, ...] | list[int], settings: Settings) -> None:
    """max_dataset_examples, max_features and max_dataset_bytes (n × features × 4) for a dataset of `shape`."""
    if len(shape) < 2 or shape[0] < 2 or math.prod(shape[1:]) == 0:
        raise InvalidInput.at(
            ["body", "X"], "X must have shape [n, ...] with n >= 2 examples of at least one value each", list(shape)
        )
    found = limits.dataset_issues(shape, settings)
    decoded = math.prod(shape) * 4
    if decoded > settings.max_dataset_bytes:
        found.append(
            limits.limit_issue(
                ["body", "file", "X"],
                "X as float32",
                decoded,
                "max_dataset_bytes",
                settings.max_dataset_bytes,
                " bytes",
            )
        )
    if found:
        raise InvalidInput(found)


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
    if y.dtype.kind in "US":  # string labels: numbered in sorted order, the names kept
        names, numbers = np.unique(y, return_inverse=True)
        return ParsedDataset(X32, numbers.astype(np.int64), label_names=[_label_name(name) for name in names])
    if y.dtype.kind not in "iuf" or (y.dtype.kind == "f" and not np.all(np.isfinite(y))):
        raise InvalidInput.at(
            ["body", "y"], f"y must hold integer or string labels; got dtype {y.dtype.str!r}", str(y.dtype)
        )
    if y.dtype.kind == "f" and np.any(y != np.round(y)):
        first = int(np.flatnonzero(y != np.round(y))[0])
        raise InvalidInput.at(["body", "y", first], "y must hold integer labels", float(y[first]))
    if np.any(np.abs(y.astype(np.float64)) > 2**62):
        raise InvalidInput.at(["body", "y"], "labels must fit in a 64-bit integer", None)
    return ParsedDataset(X32, y.astype(np.int64))


def _label_name(value: np.str_ | np.bytes_) -> str:
    """A string label as text: non-empty UTF-8 (a NumPy string drops trailing NULs, so "\\0" is empty)."""
    try:
        text = value.decode("utf-8") if isinstance(value, bytes) else str(value)
        text.encode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError) as exc:
        msg = f"string labels must be UTF-8 text (no lone surrogates or invalid bytes): {exc.reason}"
        shown = repr(bytes(value) if isinstance(value, bytes) else str(value))
        raise InvalidInput.at(["body", "y"], msg, shown[:100]) from exc
    if not text:
        raise InvalidInput.at(["body", "y"], "string labels must not be empty", "")
    return text


# ------------------------------------------------------------------------------------------ csv


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


#: Longest CSV line accepted, in bytes per allowed column (a number's text is far shorter).
CSV_BYTES_PER_COLUMN = 64


def scan_csv_lines(path: Path, settings: Settings) -> None:
    """Before the CSV is parsed: its first line has at most max_features + 1 columns (counted as commas,
    so quoted commas count too) and no line is longer than CSV_BYTES_PER_COLUMN bytes per allowed column.
    Reads the file in 1 MiB blocks; a parser never sees a line that would not fit."""
    columns_allowed = settings.max_features + 1
    max_line = CSV_BYTES_PER_COLUMN * columns_allowed
    first_line_commas, line_length, first = 0, 0, True
    with open(path, "rb") as handle:
        while block := handle.read(1024**2):
            for piece_index, piece in enumerate(block.split(b"\n")):
                if piece_index > 0:
                    if first and line_length > 0:
                        first = False
                    line_length = 0
                line_length += len(piece)
                if first:
                    first_line_commas += piece.count(b",")
                    if first_line_commas + 1 > columns_allowed:
                        found = limits.limit_issue(
                            ["body", "file", "row 1"],
                            "columns",
                            first_line_commas + 1,
                            "max_features",
                            settings.max_features,
                            " (+ 1 label column)",
                        )
                        raise InvalidInput([found])
                if line_length > max_line:
                    msg = (
                        f"a line is longer than {max_line} bytes ({CSV_BYTES_PER_COLUMN} per column allowed by "
                        "max_features, LELASTIC_MAX_FEATURES)"
                    )
                    raise InvalidInput.at(["body", "file"], msg, None)


def read_csv(path: Path, settings: Settings, *, label_column: str | None) -> ParsedDataset:
    """Numeric CSV, read row by row. The first row is a header when none of its cells is a number.

    `label_column` is a header name, or a 0-based column number when there is no header. Without it, a
    header column named label, y, class or target (any case) holds the labels, and a note says so.
    Labels are integers, or names (any text) that are numbered in sorted order. Lines and columns are
    bounded before parsing (`scan_csv_lines`); rows past max_dataset_examples or max_dataset_bytes stop the read.
    """
    scan_csv_lines(path, settings)
    values = array.array("f")  # float32 as parsed: the table costs what the stored X does
    label_cells: list[tuple[int, str]] = []
    names: list[str] = []
    label_index: int | None = None
    notes: list[str] = []
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
                    if label_index is None and is_header:
                        label_index = _detected_label_index(names)
                        if label_index is not None:
                            notes.append(
                                f"column {names[label_index]!r} holds the labels (found by its name); send "
                                "label_column to choose another column"
                            )
                    if label_index is not None and len(names) == 1:
                        msg = f"column {names[label_index]!r} holds the labels and no column is left for features"
                        raise InvalidInput.at(["body", "file", f"row {line}"], msg, names)
                    if is_header:
                        continue
                if len(row) != len(names):
                    msg = f"row {line} has {len(row)} columns; the file has {len(names)}"
                    raise InvalidInput.at(["body", "file", f"row {line}"], msg, len(row))
                for c, cell in enumerate(row):
                    if c == label_index:
                        label_cells.append((line, cell.strip()))
                        continue
                    number = _number(cell)
                    if number is None or not math.isfinite(number) or abs(number) > FLOAT32_MAX:
                        msg = f"row {line}, column {names[c]!r}: expected a finite number"
                        if number is not None and math.isfinite(number):
                            msg += f" within float32's range (|x| <= {FLOAT32_MAX:.4g})"
                        raise InvalidInput.at(["body", "file", f"row {line}", f"column {names[c]}"], msg, cell)
                    values.append(number)
                rows += 1
                if rows > settings.max_dataset_examples or rows * len(names) * 4 > settings.max_dataset_bytes:
                    check_dataset_size((rows, max(len(names) - (label_index is not None), 1)), settings)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise InvalidInput.at(["body", "file"], f"not a UTF-8 CSV file: {exc}", None) from exc
    features = max(len(names) - (label_index is not None), 1)
    check_dataset_size((rows, features), settings)
    table = np.frombuffer(values, dtype=np.float32).reshape(rows, features)
    if label_index is None:
        return checked_dataset(table, None)
    parsed = checked_dataset(table, _csv_labels(label_cells, names[label_index]))
    parsed.label_column, parsed.notes = names[label_index], notes
    return parsed


def _csv_labels(cells: list[tuple[int, str]], column: str) -> np.ndarray:
    """The label column as integers when every cell is a number (each must be an integer), else as names."""
    numbers = [_number(cell) for _, cell in cells]
    if any(number is None for number in numbers):
        empty = next((line for line, cell in cells if not cell), None)
        if empty is not None:
            msg = f"row {empty}, column {column!r}: the label is empty"
            raise InvalidInput.at(["body", "file", f"row {empty}", f"column {column}"], msg, "")
        long = next(((line, cell) for line, cell in cells if len(cell) > MAX_LABEL_CHARS), None)
        if long is not None:
            msg = f"row {long[0]}, column {column!r}: label names are at most {MAX_LABEL_CHARS} characters"
            raise InvalidInput.at(["body", "file", f"row {long[0]}", f"column {column}"], msg, long[1])
        return np.array([cell for _, cell in cells], dtype=str)
    for (line, cell), number in zip(cells, numbers, strict=True):
        if number is None or not math.isfinite(number) or number != round(number):
            msg = f"row {line}, column {column!r}: labels must be integers or names"
            raise InvalidInput.at(["body", "file", f"row {line}", f"column {column}"], msg, cell)
    return np.array(numbers, dtype=np.float64)


def _detected_label_index(names: list[str]) -> int | None:
    lowered = [name.lower() for name in names]
    for candidate in LABEL_COLUMN_NAMES:
        if candidate in lowered:
            return lowered.index(candidate)
    return None


def _label_index(names: list[str], label_column: str | None) -> int | None:
    if label_column is None:
        return None
    if label_column not in names:
        raise InvalidInput.at(["body", "label_column"], f"no such column; allowed: {names}", label_column)
    return names.index(label_column)


# -------------------------------------------------------------------------------- safetensors


def read_safetensors_header(path: Path, settings: Settings) -> dict[str, dict[str, Any]]:
    """Name → {"dtype", "shape"} of every tensor, after checking the header against the file size, the
    header against max_safetensors_header_bytes and max_weight_tensors, and every float tensor for
    non-finite values."""
    total = path.stat().st_size

    def bad(msg: str, value: Any = None) -> InvalidInput:
        return InvalidInput.at(["body", "file"], f"not a valid .safetensors file: {msg}", value)

    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise bad("shorter than its 8-byte header length", total)
        length = int.from_bytes(prefix, "little")
        if length > settings.max_safetensors_header_bytes:
            found = limits.limit_issue(
                ["body", "file"],
                "header length",
                length,
                "max_safetensors_header_bytes",
                settings.max_safetensors_header_bytes,
                " bytes",
            )
            raise InvalidInput([found])
        if length > total - 8:
            raise bad(f"header length {length} exceeds the file ({total} bytes)", length)
        raw = handle.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except RecursionError as exc:
        raise bad("the header nests too deeply (it must be an object of tensor entries)") from exc
    except (UnicodeDecodeError, ValueError) as exc:
        raise bad(f"the header is not UTF-8 JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise bad("the header must be a JSON object", type(header).__name__)
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise bad("__metadata__ must map strings to strings", None)
    if not header:
        raise bad("it holds no tensors")
    if len(header) > settings.max_weight_tensors:
        found = limits.limit_issue(
            ["body", "file"], "tensors", len(header), "max_weight_tensors", settings.max_weight_tensors
        )
        raise InvalidInput([found])
    tensors: dict[str, dict[str, Any]] = {}
    spans = []
    for name, entry in header.items():
        try:
            name.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise bad("tensor names must be UTF-8 text (no lone surrogates)", repr(name)[:100]) from exc
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise bad(f"tensor {name[:100]!r} needs exactly dtype, shape and data_offsets", entry)
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in SAFETENSORS_ITEMSIZE:
            raise bad(f"tensor {name[:100]!r} has dtype {dtype!r}; allowed: {sorted(SAFETENSORS_ITEMSIZE)}", dtype)
        if not (isinstance(shape, list) and all(type(s) is int and s >= 0 for s in shape)):
            raise bad(f"tensor {name[:100]!r} has an invalid shape", shape)
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
            raise bad(f"tensor {name[:100]!r} has invalid data_offsets", offsets)
        if offsets[1] - offsets[0] != math.prod(shape) * SAFETENSORS_ITEMSIZE[dtype]:
            raise bad(f"tensor {name[:100]!r}: data_offsets {offsets} do not match shape {shape} of {dtype}", offsets)
        spans.append((offsets[0], offsets[1], name))
        tensors[name] = {"dtype": dtype, "shape": shape}
    position = 0
    for begin, end, name in sorted(spans):
        if begin != position:
            raise bad(f"tensor {name[:100]!r} starts at byte {begin}, expected {position} (no gaps or overlaps)", begin)
        position = end
    if position != total - 8 - length:
        raise bad(f"the tensors take {position} bytes but the file holds {total - 8 - length} after the header")
    for begin, end, name in spans:
        check_finite_tensor(path, 8 + length + begin, end - begin, name, tensors[name]["dtype"])
    return tensors


#: (unsigned view, exponent mask) of each float dtype: a value is NaN or ±Inf when its exponent bits are all
#: ones. F8_E4M3 (the "fn" variant safetensors uses) has no infinities; its NaN is every bit but the sign.
_FLOAT_BITS: dict[str, tuple[np.dtype, int]] = {
    "F64": (np.dtype("<u8"), 0x7FF0_0000_0000_0000),
    "F32": (np.dtype("<u4"), 0x7F80_0000),
    "F16": (np.dtype("<u2"), 0x7C00),
    "BF16": (np.dtype("<u2"), 0x7F80),
    "F8_E5M2": (np.dtype("u1"), 0x7C),
    "F8_E4M3": (np.dtype("u1"), 0x7F),
}
#: Bytes of a tensor checked at a time.
FINITE_CHECK_BLOCK = 16 * 1024**2


def check_finite_tensor(path: Path, offset: int, size: int, name: str, dtype: str) -> None:
    """InvalidInput if the float tensor at `offset` of the file holds a NaN or ±Inf (read in blocks)."""
    if dtype not in _FLOAT_BITS or size == 0:
        return
    view, mask = _FLOAT_BITS[dtype]
    step = FINITE_CHECK_BLOCK - FINITE_CHECK_BLOCK % view.itemsize
    with open(path, "rb") as handle:
        handle.seek(offset)
        done = 0
        while done < size:
            block = np.frombuffer(handle.read(min(step, size - done)), dtype=view)
            if np.any((block & view.type(mask)) == view.type(mask)):
                msg = f"tensor {name[:100]!r} holds NaN or ±Inf; only finite weights are accepted"
                raise InvalidInput.at(["body", "file", name[:100]], msg, None)
            done += step


def safe_name(filename: str) -> str:
    """The file name without any directory part or control characters, at most 200 characters."""
    name = re.sub(r"[\x00-\x1f\x7f]", "", filename.replace("\\", "/").rsplit("/", 1)[-1])
    return name[:200] or "upload"
