"""tests/gpu runs the engine on a CUDA device against the float64 CPU reference; without a device every
test here is skipped, each by name, with the reason "no CUDA device"."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available() or os.environ.get("LELASTIC_GPU_TEST_DEVICE", "cuda") != "cuda":
        return
    for item in items:
        if item.path.parent.name == "gpu":
            item.add_marker(pytest.mark.skip(reason=f"no CUDA device ({item.name})"))


@pytest.fixture(autouse=True)
def no_tf32() -> Iterator[None]:
    """TF32 off around each test (the engine turns it off itself; this guards the references too)."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn
