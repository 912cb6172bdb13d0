"""Slow and idle clients: bounds on what a connection may hold without sending anything useful.

    header_timeout_seconds      a connection that has not sent a complete request head (request line +
                                headers) this long after it opened, or after its previous response, is
                                closed (uvicorn has no such timeout: `HeaderTimeoutH11Protocol`)
    max_header_bytes            a larger request head is refused with 400 (h11's incomplete-event limit)
    keep_alive_seconds          an idle keep-alive connection is closed (uvicorn's timeout_keep_alive)
    max_connections             beyond this many open connections (or requests in progress) a request
                                gets 503 (uvicorn's limit_concurrency)
    body_read_timeout_seconds   a body that pauses longer is refused with 408 (`BodyTimeoutMiddleware`)
    body_min_bytes_per_second   a body slower than this on average, once body_read_timeout_seconds have
                                passed, is refused with 408

`uvicorn_config` builds the uvicorn configuration of `lelastic api` with all of them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import anyio
import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from service.api.errors import error_response
from service.api.limits import env_name
from service.contract.settings import Settings

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class HeaderTimeoutH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline on each request head (`header_timeout`, seconds).

    The timer starts when the connection opens and again when a response completes; it stops when h11
    has read a complete request head. When it fires the connection is closed.
    """

    header_timeout: float = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._stop_head_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        self._stop_head_timer()
        self._head_timer = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.logger.info("closing a connection that sent no complete request head in %.0f s", self.header_timeout)
            self.transport.close()


def protocol_class(settings: Settings) -> type[HeaderTimeoutH11Protocol]:
    """`HeaderTimeoutH11Protocol` with the settings' header timeout."""
    return type(
        "HeaderTimeoutProtocol", (HeaderTimeoutH11Protocol,), {"header_timeout": settings.header_timeout_seconds}
    )


class BodyTooSlow(Exception):
    """A request body paused too long, or arrives too slowly."""


def body_timeout_response(settings: Settings, received: int, elapsed: float) -> Any:
    """408 naming the two body settings; the connection is closed after it."""
    idle, rate = "body_read_timeout_seconds", "body_min_bytes_per_second"
    msg = (
        f"the request body arrived too slowly: {received} bytes in {elapsed:.1f} s; a body may pause at most "
        f"{idle} = {settings.body_read_timeout_seconds} s ({env_name(idle)}) and must average at least "
        f"{rate} = {settings.body_min_bytes_per_second} bytes/s ({env_name(rate)}) after that long"
    )
    issue = {"loc": ["body"], "msg": msg, "input": received}
    issue["ctx"] = {"limit": idle, "allowed": settings.body_read_timeout_seconds, "env": env_name(idle)}
    response = error_response(408, [issue])
    response.headers["Connection"] = "close"
    return response


@dataclass
class _BodyState:
    received: int = 0
    complete: bool = False
    timed_out: bool = False
    response_started: bool = False


class BodyTimeoutMiddleware:
    """ASGI middleware: a request body must keep coming (see the module doc), else 408 and the
    connection is closed. Messages after the body's last chunk (a disconnect) pass untimed."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        idle = self.settings.body_read_timeout_seconds
        min_rate = self.settings.body_min_bytes_per_second
        started = time.monotonic()
        state = _BodyState()

        def wait_limit() -> float:
            """Seconds the next chunk may take: the idle limit, or less once the rate would fall short."""
            elapsed = time.monotonic() - started
            if min_rate <= 0:
                return idle
            return min(idle, max(idle, state.received / min_rate) - elapsed)

        async def timed_receive() -> Message:
            if state.complete:
                return await receive()
            limit = wait_limit()
            message: Message | None = None
            if limit > 0:
                with anyio.move_on_after(limit):
                    message = await receive()
            if message is None:
                state.timed_out = True
                raise BodyTooSlow
            if message["type"] == "http.request":
                state.received += len(message.get("body", b""))
                state.complete = not message.get("more_body", False)
            else:
                state.complete = True
            return message

        async def guarded_send(message: Message) -> None:
            if state.timed_out:
                return  # the app's answer to the exception it got; ours is sent below
            if message["type"] == "http.response.start":
                state.response_started = True
            await send(message)

        try:
            await self.app(scope, timed_receive, guarded_send)
        except Exception:
            if not state.timed_out:
                raise
        if state.timed_out and not state.response_started:
            elapsed = time.monotonic() - started
            await body_timeout_response(self.settings, state.received, elapsed)(scope, receive, send)


def uvicorn_config(app: ASGIApp, settings: Settings, *, host: str, port: int, **options: Any) -> uvicorn.Config:
    """uvicorn's configuration of the API with every bound of the module doc; `app` is wrapped in
    BodyTimeoutMiddleware. `options` go to uvicorn.Config as they are."""
    return uvicorn.Config(
        BodyTimeoutMiddleware(app, settings),
        host=host,
        port=port,
        http=protocol_class(settings),
        limit_concurrency=settings.max_connections,
        timeout_keep_alive=settings.keep_alive_seconds,
        h11_max_incomplete_event_size=settings.max_header_bytes,
        **options,
    )
