"""Bounded request bodies: nothing past a limit is ever read or decompressed.

`BodyLimit` wraps the ASGI `receive` of every request: a declared Content-Length over the route's
limit answers 413 before a byte is read, and a body sent without one (chunked) is read only up to the
limit. The check runs when the body is first read, so a handler may refuse earlier for a cheaper
reason (the Stripe webhook refuses an unsigned delivery without reading it).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

from fastapi import Request
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from batchrouter.api.errors import BodyTooLarge
from batchrouter.core.errors import InvalidRequest, UnreadableRequest, UnsupportedEncoding

# (limit in bytes, what the body is) for a route, given the route's path template
Limits = Callable[[str], tuple[int, str]]


class BodyLimit:
    def __init__(self, app: ASGIApp, *, limits: Limits) -> None:
        self.app, self.limits = app, limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        read = 0

        async def bounded() -> Message:
            nonlocal read
            route = scope.get("route")
            limit, what = self.limits(str(getattr(route, "path", scope["path"])))
            too_large = BodyTooLarge(f"{what} is over the limit of {limit:,} bytes; send less")
            declared = dict(scope["headers"]).get(b"content-length")
            if declared is not None:
                if not declared.strip().isdigit():
                    raise UnreadableRequest("Content-Length is not a number")
                if int(declared) > limit:
                    raise too_large
            message = await receive()
            read += len(message.get("body", b""))
            if read > limit:
                raise too_large
            return message

        await self.app(scope, bounded, send)


async def read_body(request: Request) -> bytes:
    """The whole body (within the route's limit, which `BodyLimit` enforces while it is read)."""
    try:
        return await request.body()
    except ClientDisconnect:
        raise UnreadableRequest("the client disconnected before sending the whole body") from None


def gunzip_bounded(data: bytes, limit: int, what: str) -> bytes:
    """Decompress a gzip body without ever holding more than `limit` decoded bytes (413 past it)."""
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error as exc:
        raise UnreadableRequest(f"{what} says Content-Encoding gzip but is not gzip ({exc})") from exc
    if len(out) > limit or inflater.unconsumed_tail:
        raise BodyTooLarge(f"{what} decompresses to over the limit of {limit:,} bytes")
    return out


def decoded(request: Request, data: bytes, limit: int, what: str) -> bytes:
    """`data` as sent before any Content-Encoding (gzip or none); refused if empty."""
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding == "gzip":
        data = gunzip_bounded(data, limit, what)
    elif encoding not in ("", "identity"):
        raise UnsupportedEncoding(f"Content-Encoding {encoding!r}: send gzip or no encoding")
    if not data:
        raise InvalidRequest(f"the request body must be {what}")
    return data
