"""Builders shared by the tests."""

from __future__ import annotations

from typing import Any


def tiny_spec(*, rows: int = 40, width: int = 64, **overrides: Any) -> dict[str, Any]:
    """A job spec that runs in a fraction of a second: the first `rows` digits, an untrained narrow MLP,
    the kernelized limit, k = 2 (fields in `overrides` replace the defaults)."""
    spec: dict[str, Any] = {
        "dataset": {"builtin": "digits"},
        "primary": {"indices": list(range(rows))},
        "model": {"arch": "mlp", "width": width},
        "weights": {"source": "init"},
        "similarity": {"kind": "kernelized", "step": 0},
        "clustering": {"k": 2},
        "baselines": [],
    }
    spec.update(overrides)
    return spec
