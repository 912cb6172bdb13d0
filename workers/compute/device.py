"""Exact float32 on a CUDA device: TF32 off for matmuls and cuDNN convolutions while the engine runs.

TF32 rounds float32 operands to 10 mantissa bits (relative error about 5e-4), far above the engine's
float32 tolerances; on the CPU these flags have no effect.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def exact_float32() -> Iterator[None]:
    """TF32 off (matmul and cuDNN) inside the block, the previous settings restored after it."""
    matmul = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.backends.cudnn.flags(
            enabled=torch.backends.cudnn.enabled,
            benchmark=torch.backends.cudnn.benchmark,
            deterministic=torch.backends.cudnn.deterministic,
            allow_tf32=False,
        ):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul
