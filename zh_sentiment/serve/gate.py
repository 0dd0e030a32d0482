"""What every HTTP request passes first: the body-size limit (413), then the request metrics.

A plain ASGI middleware rather than FastAPI's: it refuses an oversized body before reading it
whole (by its Content-Length, or as soon as a chunked body passes the limit), and hands the
body it read on to the app unchanged.
"""

import json
import time

from zh_sentiment.serve.metrics import Metrics

ENDPOINTS = ("/predict", "/health", "/info", "/metrics", "/docs", "/openapi.json", "/")


def endpoint_label(path: str) -> str:
    """A metrics label: the known endpoints, or "static"/"other" (a label per unknown path would grow forever)."""
    if path in ENDPOINTS:
        return path
    return "static" if path.startswith(("/page/", "/static-offline-docs/")) else "other"


async def send_error(send, status: int, message: str, error_type: str) -> None:
    """An error in TEI's shape: {"error": ..., "error_type": ...}."""
    body = json.dumps({"error": message, "error_type": error_type}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Gate:
    def __init__(self, app, max_body_bytes: int, metrics: Metrics):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 0  # 0: no answer sent (the client left first)

        async def send_counted(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            body = await self.read_body(scope, receive)
            if body is None:
                await send_error(
                    send_counted,
                    413,
                    f"the request body is larger than the server takes ({self.max_body_bytes:,} bytes, "
                    "its --max-body-bytes); send fewer or shorter texts per request",
                    "validation",
                )
            elif body is not False:
                await self.app(scope, replay(body, receive), send_counted)
        finally:
            endpoint = endpoint_label(scope["path"])
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)

    async def read_body(self, scope, receive) -> bytes | None | bool:
        """The whole body; None when it is over the limit; False when the client left while sending it."""
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_body_bytes:
                return None
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return False
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def replay(body: bytes, receive):
    """An ASGI receive that gives `body` first, then whatever the connection says (a disconnect)."""
    given = False

    async def replayed():
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed
