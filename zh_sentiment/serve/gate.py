"""What every HTTP request passes first: the Host check, the API key, the body-size limit (413), the request metrics.

A plain ASGI middleware rather than FastAPI's: it refuses a request before reading its body whole,
and hands the body it read on to the app unchanged.

A refusal (403, 401, 413) is answered at once, then the rest of the request's body is read and
dropped, up to DRAIN_BYTES, before the connection closes. Closing with the body still unread would
make the kernel reset the connection, and a client that writes its whole body before reading the
answer (Python's urllib; requests and httpx on a large body) would see that reset, not the refusal.
"""

import hmac
import ipaddress
import json
import socket
import time
from dataclasses import dataclass

from zh_sentiment.serve.metrics import Metrics

ENDPOINTS = ("/predict", "/health", "/info", "/metrics", "/docs", "/openapi.json", "/")
DRAIN_BYTES = 64 * 2**20  # read and dropped after a refusal at most; a longer body gets its connection closed


def endpoint_label(path: str) -> str:
    """A metrics label: the known endpoints, or "static"/"other" (a label per unknown path would grow forever)."""
    if path in ENDPOINTS:
        return path
    return "static" if path.startswith(("/page/", "/static-offline-docs/")) else "other"


def is_public(path: str) -> bool:
    """Open without the API key: /health (for load balancers) and the page's code, which holds no data."""
    return path in ("/health", "/") or path.startswith("/page/")


def is_loopback_name(host: str) -> bool:
    """Whether a Host header names this machine: localhost, 127.x.x.x or [::1], with or without a port."""
    name = host.strip().lower()
    if name.startswith("["):
        name = name[1 : name.find("]")] if "]" in name else name
    elif name.count(":") == 1:
        name = name.partition(":")[0]
    name = name.rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def is_loopback_address(host: str) -> bool:
    """Whether listening on `host` (--host) is reachable from this machine only."""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)}
    except (OSError, UnicodeError):
        return False
    return bool(addresses) and all(ipaddress.ip_address(address.partition("%")[0]).is_loopback for address in addresses)


def header(scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


@dataclass(frozen=True)
class Refusal:
    """An error answer given before the body is read (TEI's shape), with any extra headers."""

    status: int
    message: str
    error_type: str
    headers: tuple = ()


@dataclass
class Unread:
    """A body refused before it was read whole: how much of it came, and whether that was all of it."""

    received: int = 0
    ended: bool = False


class Gate:
    def __init__(
        self, app, max_body_bytes: int, metrics: Metrics, api_key: str | None = None, loopback_hosts_only=False
    ):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics
        self.api_key = api_key.encode() if api_key else None
        self.loopback_hosts_only = loopback_hosts_only

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
            refusal, unread = self.refusal(scope), Unread()
            if refusal is None:
                body = await self.read_body(scope, receive)
                if isinstance(body, bytes):
                    await self.app(scope, replay(body, receive), send_counted)
                elif isinstance(body, Unread):
                    refusal, unread = self.too_large(), body
            if refusal is not None:
                await refuse(scope, receive, send_counted, refusal, unread)
        finally:
            endpoint = endpoint_label(scope["path"])
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)

    def refusal(self, scope) -> Refusal | None:
        """The refusal of a request refused on its head alone, else None."""
        host = header(scope, b"host")
        if self.loopback_hosts_only and host is not None and not is_loopback_name(host.decode("latin-1")):
            return Refusal(
                403,
                f"Host: {host.decode('latin-1')} is not this machine's name: the server listens on a loopback "
                "address and answers only requests for localhost, 127.0.0.1 or [::1] (another name may be a web "
                "page's DNS rebinding attack). Behind a reverse proxy, have the proxy send the address it connects "
                "to as Host (nginx does by default); to serve other machines, start it with --host and --api-key",
                "forbidden",
            )
        if self.api_key is not None and not is_public(scope["path"]) and not self.authorized(scope):
            return Refusal(
                401,
                "this server needs its API key: send the header Authorization: Bearer <key> "
                "(the key the server was started with, --api-key or ZH_SENTIMENT_API_KEY)",
                "unauthorized",
                ((b"www-authenticate", b"Bearer"),),
            )
        return None

    def too_large(self) -> Refusal:
        return Refusal(
            413,
            f"the request body is larger than the server takes ({self.max_body_bytes:,} bytes, "
            "its --max-body-bytes); send fewer or shorter texts per request",
            "validation",
        )

    def authorized(self, scope) -> bool:
        scheme, _, token = (header(scope, b"authorization") or b"").partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.api_key)

    async def read_body(self, scope, receive) -> bytes | Unread | None:
        """The whole body; Unread when it is over the limit; None when the client left while sending it."""
        length = header(scope, b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            return Unread()
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            more = message.get("more_body", False)
            size += len(chunk)
            if size > self.max_body_bytes:
                return Unread(size, ended=not more)
            chunks.append(chunk)
            if not more:
                return b"".join(chunks)


async def refuse(scope, receive, send, refusal: Refusal, unread: Unread) -> None:
    """Answer `refusal` now, in TEI's shape; read the rest of the body (up to DRAIN_BYTES in all) and drop it;
    then close the connection."""
    body = json.dumps({"error": refusal.message, "error_type": refusal.error_type}, separators=(",", ":")).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
        *refusal.headers,
    ]
    await send({"type": "http.response.start", "status": refusal.status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": True})  # the end waits for the drain
    length = header(scope, b"content-length")
    too_long = length is not None and length.isdigit() and int(length) > DRAIN_BYTES
    # a client that waits for "100 Continue" sends no body after a final answer
    if not too_long and header(scope, b"expect") != b"100-continue":
        received, ended = unread.received, unread.ended
        while not ended and received <= DRAIN_BYTES:
            message = await receive()
            received += len(message.get("body", b""))
            ended = message["type"] == "http.disconnect" or not message.get("more_body", False)
    await send({"type": "http.response.body", "body": b"", "more_body": False})


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
