"""A tiny asyncio HTTP/1.0 server for health checks and Prometheus metrics (GET only)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)

Handler = Callable[[], tuple[int, str, str]]  # -> (status, content type, body)

_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


async def serve(host: str, port: int, routes: Mapping[str, Handler]) -> asyncio.Server:
    """Start serving `routes` (path -> handler) on host:port; returns the server to close later."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(5):  # not wait_for: it can lose a cancellation
                request = await reader.readline()
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass
            parts = request.decode("latin-1").split()
            if len(parts) < 2:
                return
            method, path = parts[0], parts[1].split("?", 1)[0]
            if method not in ("GET", "HEAD"):
                status, ctype, body = 405, "text/plain", "method not allowed\n"
            elif path in routes:
                status, ctype, body = routes[path]()
            else:
                status, ctype, body = 404, "text/plain", "not found\n"
            data = body.encode()
            head = (
                f"HTTP/1.0 {status} {_REASONS.get(status, '')}\r\n"
                f"Content-Type: {ctype}\r\nContent-Length: {len(data)}\r\n"
                "Connection: close\r\n\r\n"
            )
            writer.write(head.encode() + (b"" if method == "HEAD" else data))
            await writer.drain()
        except (TimeoutError, ConnectionError) as exc:
            log.debug("HTTP client went away: %s", exc)
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port, reuse_address=True)
