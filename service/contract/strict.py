"""The base of every part of the job spec."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """Base of every spec part: unknown fields are errors, not silently ignored, and values are not
    coerced across types (`"seed": "1"` and `"seed": true` are errors; an integer still fills a float)."""

    model_config = ConfigDict(extra="forbid", strict=True)
