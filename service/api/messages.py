"""Request-validation errors as a user reads them: one clear entry per mistake, in the user's own path.

pydantic reports a mistake inside a union once per branch, and names the branches in `loc` (`"mlp"` for
a model's `arch`, `"str"` / `"BuiltinDataset"` for a dataset); its messages start with "Value error, ".
`friendly_errors` rewrites its error list: branch names are dropped from `loc` (only keys and indices of
the request remain), a type mismatch of a branch the input was not meant for is dropped when another
branch explains the mistake, entries at the same place merge, and an unknown field or value gets a
"did you mean" when a known one is close. A body that is not JSON gets one error naming Content-Type.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

from service.contract.spec import JobSpec

#: pydantic error types that only say the input has the wrong type for one branch of a union.
TYPE_MISMATCHES = ("model_type", "model_attributes_type", "dict_type", "list_type", "is_instance_of")
JSON_TYPES = ("application/json",)


def friendly_errors(
    errors: Sequence[dict[str, Any]], body: Any, *, content_type: str | None = None
) -> list[dict[str, Any]]:
    """The pydantic error list of a request rewritten for people (see the module docstring)."""
    media_type = (content_type or "").split(";")[0].strip().lower()
    if media_type not in JSON_TYPES and any(list(error.get("loc", ())) == ["body"] for error in errors):
        msg = "send the job spec as a JSON object with the header Content-Type: application/json"
        return [{"type": "content_type", "loc": ["header", "content-type"], "msg": msg, "input": content_type}]
    entries = [_rewritten(error, body) for error in errors]
    entries = [entry for entry in entries if not _explained_elsewhere(entry, entries)]
    merged: dict[tuple[Any, ...], dict[str, Any]] = {}
    for entry in entries:
        key = tuple(entry["loc"])
        if key in merged:
            merged[key] = _merge(merged[key], entry)
        else:
            merged[key] = entry
    return list(merged.values())


#: An enum member as pydantic names it among a literal's values, `<JobStatus.QUEUED: 'queued'>`: its value is kept.
ENUM_MEMBER = re.compile(r"<\w+\.\w+: ('[^']*')>")


def _rewritten(error: dict[str, Any], body: Any) -> dict[str, Any]:
    kind = str(error.get("type", ""))
    loc = _user_loc(list(error.get("loc", ())), body, keep_last=kind in ("missing", "extra_forbidden"))
    msg = str(error.get("msg", "")).removeprefix("Value error, ").removeprefix("Assertion failed, ")
    msg = ENUM_MEMBER.sub(r"\1", re.sub(r" or instance of \w+", "", msg))
    entry: dict[str, Any] = {"type": kind, "loc": loc, "msg": msg, "input": error.get("input")}
    ctx = {
        k: ENUM_MEMBER.sub(r"\1", v) if isinstance(v, str) else v
        for k, v in (error.get("ctx") or {}).items()
        if k != "error"
    }
    if ctx:
        entry["ctx"] = ctx
    suggestion = _suggestion(kind, loc, error, body)
    if suggestion:
        entry["msg"] += f"; did you mean {suggestion!r}?"
    if kind == "extra_forbidden":
        allowed = _allowed_fields(loc[1:-1], body)
        entry["msg"] = f"unknown field {loc[-1]!r}" + (f"; allowed: {allowed}" if allowed else "")
        if suggestion:
            entry["msg"] += f"; did you mean {suggestion!r}?"
    return entry


def _user_loc(loc: list[Any], body: Any, *, keep_last: bool) -> list[Any]:
    """`loc` with the segments the request does not have (union branch names) left out."""
    if not loc or loc[0] != "body":
        return loc
    out: list[Any] = ["body"]
    node = body
    for position, segment in enumerate(loc[1:], start=1):
        last = position == len(loc) - 1
        if isinstance(node, dict) and isinstance(segment, str) and segment in node:
            out.append(segment)
            node = node[segment]
        elif isinstance(node, list) and isinstance(segment, int) and 0 <= segment < len(node):
            out.append(segment)
            node = node[segment]
        elif last and keep_last:
            out.append(segment)
    return out


def _explained_elsewhere(entry: dict[str, Any], entries: list[dict[str, Any]]) -> bool:
    """A branch's type mismatch when another entry lies deeper under the same place (the branch meant)."""
    if not (entry["type"] in TYPE_MISMATCHES or entry["type"].endswith("_type")):
        return False
    loc = entry["loc"]
    return any(len(other["loc"]) > len(loc) and other["loc"][: len(loc)] == loc for other in entries)


def _merge(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """Two entries at one place (the branches of a union): one message that names both expectations."""
    prefix = "Input should be "
    if first["msg"].startswith(prefix) and second["msg"].startswith(prefix):
        if second["msg"].removeprefix(prefix) not in first["msg"]:
            first = {**first, "msg": f"{first['msg']} or {second['msg'].removeprefix(prefix)}"}
        return first
    if second["msg"] not in first["msg"]:
        first = {**first, "msg": f"{first['msg']}; or: {second['msg']}"}
    return first


def _quoted(text: str) -> list[str]:
    return re.findall(r"'([^']*)'", text)


def _suggestion(kind: str, loc: list[Any], error: dict[str, Any], body: Any) -> str | None:
    """The known name closest to the one given, when one is close enough."""
    ctx = error.get("ctx") or {}
    given: Any = None
    options: list[str] = []
    if kind == "literal_error":
        given, options = error.get("input"), _quoted(str(ctx.get("expected", "")))
    elif kind == "union_tag_invalid":
        given, options = ctx.get("tag"), _quoted(str(ctx.get("expected_tags", "")))
    elif kind == "extra_forbidden" and loc:
        given, options = loc[-1], _allowed_fields(loc[1:-1], body)
    if not isinstance(given, str) or not options:
        return None
    close = difflib.get_close_matches(given, options, n=1, cutoff=0.6)
    return close[0] if close else None


def _allowed_fields(path: list[Any], body: Any) -> list[str]:
    """The field names of the spec model at `path` (a body path), choosing union branches by the body."""
    model: type[BaseModel] | None = JobSpec
    node = body
    for segment in path:
        if model is None or not isinstance(segment, str) or segment not in model.model_fields:
            return []
        node = node.get(segment) if isinstance(node, dict) else None
        model = _branch(_models_in(model.model_fields[segment].annotation), node)
    return list(model.model_fields) if model is not None else []


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _models_in(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [model for arg in typing.get_args(annotation) for model in _models_in(arg)]
    return []


def _branch(models: list[type[BaseModel]], node: Any) -> type[BaseModel] | None:
    """The model of a union the body's object is meant for: its tag (`arch`, `source`) decides, else the
    most field names in common."""
    if not models:
        return None
    if not isinstance(node, dict):
        return models[0]
    for model in models:
        for name, field in model.model_fields.items():
            tag = typing.get_args(field.annotation)
            if name in ("arch", "source") and node.get(name) in tag:
                return model
    return max(models, key=lambda model: len(set(model.model_fields) & set(node)))
