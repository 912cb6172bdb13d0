"""Query parameters a route does not declare, or a single-valued one given twice, are refused (422).

FastAPI ignores a query parameter it does not know and keeps the last of repeated ones, so a misspelt
`GET /v1/jobs?stauts=failed` would silently list every job. `check_query_parameters` is a dependency of
the /v1 routers: it names each unknown parameter, the ones the route takes, and the closest of them.
"""

from __future__ import annotations

import difflib
import typing
from typing import Any

from fastapi import Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from service.api.errors import InvalidInput, issue

_SEQUENCES = (list, set, frozenset, tuple)


def _declared(dependant: Dependant) -> dict[str, bool]:
    """Query parameter name (its alias) → whether it takes several values, over a dependant and all the
    dependencies it pulls in."""
    found = {
        field.alias: typing.get_origin(field.field_info.annotation) in _SEQUENCES for field in dependant.query_params
    }
    for sub in dependant.dependencies:
        found.update(_declared(sub))
    return found


def check_query_parameters(request: Request) -> None:
    """InvalidInput naming every query parameter the matched route does not take, and every single-valued
    one given more than once."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    declared = _declared(route.dependant)  # a few fields: cheaper than a cache keyed by route
    allowed = ", ".join(sorted(declared)) or "none"
    problems: list[dict[str, Any]] = []
    for name in request.query_params.keys():  # each name once
        values = request.query_params.getlist(name)
        if name not in declared:
            msg = f"unknown query parameter {name!r}; this route takes: {allowed}"
            close = difflib.get_close_matches(name, list(declared), n=1, cutoff=0.6)
            if close:
                msg += f"; did you mean {close[0]!r}?"
            problems.append(issue(["query", name], msg, values[-1]))
        elif len(values) > 1 and not declared[name]:
            problems.append(issue(["query", name], f"given {len(values)} times; give it once", values))
    if problems:
        raise InvalidInput(problems)
