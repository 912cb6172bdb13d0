"""File downloads: Starlette's FileResponse (Range, If-Range, HEAD), with malformed Range headers ignored.

RFC 9110 §14.2: a server ignores a Range header it cannot parse and answers 200 with the whole file;
Starlette answers 400 text/plain instead. An unsatisfiable but well-formed range stays 416.
"""

from __future__ import annotations

from fastapi.responses import FileResponse
from starlette.responses import MalformedRangeHeader


class DownloadResponse(FileResponse):
    """A FileResponse that ignores a malformed `Range` header (200, the whole file)."""

    @classmethod
    def _parse_range_header(cls, http_range: str, file_size: int) -> list[tuple[int, int]]:
        try:
            return super()._parse_range_header(http_range, file_size)
        except (MalformedRangeHeader, ValueError):
            return []
