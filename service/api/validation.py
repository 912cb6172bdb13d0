"""Checks of a `JobSpec` against the data it names, before the job is queued.

pydantic (service.contract.spec) already checked each field on its own; here we check what needs the stored
dataset: labels that exist, indices in range, selections that do not overlap, enough examples for the
clustering, uploaded weights that fit the model, an architecture whose input rule fits the examples
(the cnn's image shapes, service.contract.architectures), and the service's
limits (examples, parameters, epochs, clusters, matrix bytes). All problems are collected and raised
together as one `InvalidInput` (422), each naming its field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis

from service.api import limits
from service.api.errors import InvalidInput, issue
from service.api.usecases.queries import is_record_id
from service.contract import memory, records, sharding
from service.contract import spec as job_spec
from service.contract.architectures import ARCHITECTURES, alternatives_phrase, architecture_of
from service.contract.settings import Settings
from service.contract.storage import DataDir

#: The smallest class of the digits builtin has this many examples (so any digit covers any k ≤ 100).
DIGITS_SMALLEST_CLASS = 174
FLOAT_TENSOR_DTYPES = ("F16", "BF16", "F32", "F64")


@dataclass
class DatasetFacts:
    """What the checks need to know about a dataset, from its record or a builtin's info()."""

    n: int
    shape: list[int]
    classes: list[int] | None
    class_counts: dict[int, int] | None  # None: unknown, assume every class is big enough
    labels_path: Any = None  # the .npz holding y, for an uploaded dataset


def dataset_facts(
    conn: redis.Redis, data_dir: DataDir, dataset: str | job_spec.BuiltinDataset, tenant: str
) -> DatasetFacts:
    if isinstance(dataset, job_spec.BuiltinDataset):
        info = dataset.info()
        if dataset.builtin == "digits":
            counts = {c: DIGITS_SMALLEST_CLASS for c in info["classes"]}
        else:
            counts = {c: info["n"] // 2 for c in info["classes"]}
        return DatasetFacts(n=info["n"], shape=info["shape"], classes=info["classes"], class_counts=counts)
    record = records.get_dataset(conn, dataset) if is_record_id(dataset) else None
    if record is None or record["tenant"] != tenant or record["kind"] != "dataset":
        yours = record if record is not None and record["tenant"] == tenant else None  # another tenant's: unknown
        hint = " (that id holds weights; pass it as weights.weights)" if yours and yours["kind"] == "weights" else ""
        raise InvalidInput.at(
            ["body", "dataset"],
            f"no uploaded dataset has this id{hint}; use an id from "
            "GET /v1/datasets or a builtin such as {'builtin': 'digits'}",
            dataset,
        )
    stored_counts = record.get("class_counts")
    return DatasetFacts(
        n=record["n"],
        shape=record["shape"],
        classes=record.get("classes"),
        class_counts={int(k): v for k, v in stored_counts.items()} if stored_counts else None,
        labels_path=data_dir.dataset_file(dataset) if record.get("has_labels") else None,
    )


def _selection_issues(name: str, selection: job_spec.Selection, facts: DatasetFacts) -> list[dict[str, Any]]:
    if selection.labels is not None:
        if facts.classes is None:
            return [
                issue(
                    ["body", name, "labels"],
                    "this dataset has no labels; select by 'indices' instead",
                    selection.labels,
                )
            ]
        unknown = [label for label in selection.labels if label not in facts.classes]
        if unknown:
            return [
                issue(
                    ["body", name, "labels"],
                    f"labels {unknown} do not occur in the dataset; allowed: {facts.classes}",
                    selection.labels,
                )
            ]
        return []
    out_of_range = [i for i in selection.indices or [] if i >= facts.n]
    if out_of_range:
        return [
            issue(
                ["body", name, "indices"],
                f"indices {out_of_range[:10]} are out of range; allowed: 0 to {facts.n - 1}",
                out_of_range[:10],
            )
        ]
    return []


def _selected_rows(selection: job_spec.Selection, facts: DatasetFacts) -> set[int] | None:
    """Row indices of a selection, when they can be known without generating a builtin."""
    if selection.indices is not None:
        return set(selection.indices)
    if facts.labels_path is None:
        return None
    with np.load(facts.labels_path, allow_pickle=False) as archive:
        y = archive["y"]
    return set(np.flatnonzero(np.isin(y, selection.labels or [])).tolist())


def _size(selection: job_spec.Selection | None, facts: DatasetFacts) -> int | None:
    """Examples a selection picks (None: unknown). No selection means every example."""
    if selection is None:
        return facts.n
    if selection.indices is not None:
        return len(selection.indices)
    if facts.class_counts is None:
        return None
    return sum(facts.class_counts.get(int(label), 0) for label in selection.labels or [])


def primary_count(spec: job_spec.JobSpec, facts: DatasetFacts) -> int | None:
    """Examples the primary selection picks (None: unknown without generating the data)."""
    if spec.primary is None and spec.auxiliary is not None:
        aux_size = _size(spec.auxiliary, facts)  # the workers take "every example not in auxiliary"
        return None if aux_size is None else facts.n - aux_size
    return _size(spec.primary, facts)


def _overlap_and_size_issues(spec: job_spec.JobSpec, facts: DatasetFacts) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    primary, auxiliary = spec.primary, spec.auxiliary
    primary_size = primary_count(spec, facts)
    if auxiliary is not None and primary is not None:
        if primary.labels is not None and auxiliary.labels is not None:
            shared = sorted(set(primary.labels) & set(auxiliary.labels))
            if shared:
                found.append(
                    issue(
                        ["body", "auxiliary", "labels"],
                        f"labels {shared} are also primary labels; the selections must not overlap",
                        auxiliary.labels,
                    )
                )
        else:
            rows_p, rows_a = _selected_rows(primary, facts), _selected_rows(auxiliary, facts)
            shared_rows = sorted(rows_p & rows_a) if rows_p is not None and rows_a is not None else []
            if shared_rows:
                found.append(
                    issue(
                        ["body", "auxiliary"],
                        f"{len(shared_rows)} rows are also primary (e.g. rows "
                        f"{shared_rows[:5]}); the selections must not overlap",
                        shared_rows[:5],
                    )
                )
    need = max(2, (spec.clustering.k or 2) if spec.clustering else 2)
    if primary_size is not None and primary_size < need:
        why = (
            f"clustering.k = {spec.clustering.k}"
            if spec.clustering and (spec.clustering.k or 2) > 2
            else "a similarity"
        )
        found.append(
            issue(
                ["body", "primary"],
                f"selects {primary_size} examples; {why} needs at least {need}",
                primary.model_dump(exclude_none=True) if primary else None,
            )
        )
    if auxiliary is not None and spec.weights.source != "trained" and spec.similarity.schedule != "trajectory":
        found.append(
            issue(
                ["body", "auxiliary"],
                "auxiliary examples are used only to train the weights "
                "(weights.source 'trained') or on an SGD trajectory (similarity.schedule 'trajectory'); "
                f"with weights.source {spec.weights.source!r} drop 'auxiliary'",
                auxiliary.model_dump(exclude_none=True),
            )
        )
    return found


def _model_issues(spec: job_spec.JobSpec, facts: DatasetFacts) -> list[dict[str, Any]]:
    """The architecture's input rule (the registry's check_input_shape) against the dataset's shape."""
    check_input_shape = architecture_of(spec.model).check_input_shape
    if check_input_shape is None:
        return []
    try:
        check_input_shape(facts.shape)
    except ValueError as exc:
        any_shape = [entry.name for entry in ARCHITECTURES.values() if entry.check_input_shape is None]
        return [
            issue(
                ["body", "model", "arch"],
                f"{exc}; use arch {alternatives_phrase(any_shape)} for this dataset",
                spec.model.arch,
            )
        ]
    return []


def _weights_issues(
    conn: redis.Redis, spec: job_spec.JobSpec, facts: DatasetFacts, tenant: str
) -> list[dict[str, Any]]:
    if not isinstance(spec.weights, job_spec.UploadedWeights):
        return []
    loc = ["body", "weights", "weights"]
    upload_id = spec.weights.weights
    record = records.get_dataset(conn, upload_id) if is_record_id(upload_id) else None
    if record is None or record["tenant"] != tenant or record["kind"] != "weights":
        yours = record if record is not None and record["tenant"] == tenant else None  # another tenant's: unknown
        what = "holds a dataset, not weights" if yours and yours["kind"] == "dataset" else "is not an upload"
        return [
            issue(
                loc,
                f"this id {what}; upload a .safetensors file to POST /v1/datasets and use its id",
                upload_id,
            )
        ]
    expected = job_spec.parameter_shapes(spec.model, facts.shape)
    got = record.get("tensors", {})
    found = []
    for name, shape in expected.items():
        if name not in got:
            found.append(issue([*loc, name], f"tensor {name!r} is missing; expected shape {shape}", None))
        elif got[name]["shape"] != shape:
            found.append(
                issue(
                    [*loc, name],
                    f"tensor {name!r} has shape {got[name]['shape']}; the model needs {shape}",
                    got[name]["shape"],
                )
            )
        elif got[name]["dtype"] not in FLOAT_TENSOR_DTYPES:
            found.append(
                issue(
                    [*loc, name],
                    f"tensor {name!r} has dtype {got[name]['dtype']}; allowed: {list(FLOAT_TENSOR_DTYPES)}",
                    got[name]["dtype"],
                )
            )
    for name in sorted(set(got) - set(expected)):
        found.append(
            issue(
                [*loc, name],
                f"tensor {name!r} is not a parameter of this model; expected names: {list(expected)}",
                got[name]["shape"],
            )
        )
    return found


def _limit_issues(
    spec: job_spec.JobSpec, facts: DatasetFacts, settings: Settings, *, known_n: bool, known_model: bool
) -> list[dict[str, Any]]:
    """The spec against the service's limits; each issue names the limit and its setting."""
    found: list[dict[str, Any]] = []
    n = primary_count(spec, facts) if known_n else None
    if n is not None and sharding.resolve_mode(spec, n, settings) == "sharded":
        n = None  # a sharded job's own limits: service.api.execution
    if n is not None and n > settings.max_examples:
        found.append(limits.limit_issue(["body", "primary"], "n", n, "max_examples", settings.max_examples))
    if n is not None and 4 * n * n > settings.max_matrix_bytes:
        found.append(
            limits.limit_issue(
                ["body", "primary"],
                f"the float32 similarity matrix, n * n * 4 bytes with n = {n},",
                4 * n * n,
                "max_matrix_bytes",
                settings.max_matrix_bytes,
                " bytes",
            )
        )
    if known_model and n is not None:
        found += _memory_issues(spec, facts, settings, n)
    if known_model:
        shapes = job_spec.parameter_shapes(spec.model, facts.shape)
        count = sum(math.prod(shape) for shape in shapes.values())
        if count > settings.max_parameters:
            found.append(
                limits.limit_issue(
                    ["body", "model"],
                    f"the model's parameter count ({spec.model.arch}, input shape {facts.shape})",
                    count,
                    "max_parameters",
                    settings.max_parameters,
                )
            )
    epochs = getattr(spec.weights, "epochs", None)
    if epochs is not None and epochs > settings.max_epochs:
        found.append(
            limits.limit_issue(["body", "weights", "epochs"], "epochs", epochs, "max_epochs", settings.max_epochs)
        )
    if spec.clustering is not None and spec.clustering.k is not None and spec.clustering.k > settings.max_clusters:
        found.append(
            limits.limit_issue(
                ["body", "clustering", "k"], "k", spec.clustering.k, "max_clusters", settings.max_clusters
            )
        )
    return found


def _memory_issues(spec: job_spec.JobSpec, facts: DatasetFacts, settings: Settings, n: int) -> list[dict[str, Any]]:
    """The estimated peak memory of a single-mode job (service.contract.memory) against max_job_memory."""
    n_auxiliary = _size(spec.auxiliary, facts) if spec.auxiliary is not None else 0
    estimate = memory.estimate_spec_memory(
        spec, n=n, n_auxiliary=n_auxiliary or 0, dataset_rows=facts.n, input_shape=facts.shape
    )
    if estimate.total <= settings.max_job_memory:
        return []
    loc: list[str | int] = (
        ["body", "model"] if estimate.driver() in ("hidden activations", "model") else ["body", "primary"]
    )
    what = f"the job's estimated peak memory ({memory.size_text(estimate.total)} with n = {n}; {estimate.explain()})"
    return [limits.limit_issue(loc, what, estimate.total, "max_job_memory", settings.max_job_memory, " bytes")]


def with_label_numbers(
    conn: redis.Redis, data_dir: DataDir, spec: job_spec.JobSpec, *, tenant: str
) -> job_spec.JobSpec:
    """The spec with label names in its selections replaced by the integer labels they stand for (a dataset
    uploaded with string labels keeps their names); InvalidInput for a name the dataset does not have."""
    named = [
        name
        for name in ("primary", "auxiliary", "observed")
        if (selection := getattr(spec, name, None)) is not None
        and any(isinstance(label, str) for label in selection.labels or [])
    ]
    if not named:
        return spec
    record = records.get_dataset(conn, spec.dataset) if isinstance(spec.dataset, str) else None
    names: list[str] = (record or {}).get("label_names") or []
    found, update = [], {}
    for name in named:
        selection = getattr(spec, name)
        unknown = [label for label in selection.labels if isinstance(label, str) and label not in names]
        if unknown:
            allowed = f"its label names are {names}" if names else "this dataset has integer labels (or none)"
            found.append(issue(["body", name, "labels"], f"labels {unknown} are not label names; {allowed}", unknown))
            continue
        numbers = [names.index(label) if isinstance(label, str) else label for label in selection.labels]
        update[name] = selection.model_copy(update={"labels": numbers})
    if found:
        raise InvalidInput(found)
    return spec.model_copy(update=update)


def check_job_spec(
    conn: redis.Redis, data_dir: DataDir, spec: job_spec.JobSpec, *, tenant: str, settings: Settings
) -> None:
    """Raise InvalidInput listing every way `spec` does not fit its dataset (and weights) or the limits."""
    facts = dataset_facts(conn, data_dir, spec.dataset, tenant)
    found: list[dict[str, Any]] = []
    for name in ("primary", "auxiliary"):
        selection = getattr(spec, name)
        if selection is not None:
            found += _selection_issues(name, selection, facts)
    selection_issues = bool(found)
    if not found:
        found += _overlap_and_size_issues(spec, facts)
    model_issues = _model_issues(spec, facts)
    found += model_issues
    if not model_issues:
        found += _weights_issues(conn, spec, facts, tenant)
    found += _limit_issues(spec, facts, settings, known_n=not selection_issues, known_model=not model_issues)
    if found:
        raise InvalidInput(found)
