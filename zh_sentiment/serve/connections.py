"""Connections: a time limit on each request's arrival, and a cap on open connections below the file limit.

uvicorn closes a kept-alive connection idle for `timeout_keep_alive`, but sets no limit on how long a
request's head and body may take to arrive, nor on how many connections are open. So ~1,000 clients
that each send half a request and wait hold the process's open files: asyncio's accept() then fails
(EMFILE), and on Python 3.11 it logs that and re-arms once for each of `backlog` tries per wake-up, so
the server accepts nothing, /health included, and its log grows by megabytes a second.

LimitedH11Protocol, uvicorn's h11 protocol with two additions, is passed to uvicorn as its `http` class:
- a read timeout: a request whose head and body have not arrived `read_timeout` seconds after its
  first byte (or after the connection opened) gets 408 and its connection closed;
- a cap: a connection that opens when `max_connections` are open closes the one that has waited
  longest for its request (sending it, or idle between requests); if every one is being answered,
  the new one is closed.
The cap must leave room below the file limit for the files the server opens and for the
connections accepted before the cap is applied to them: asyncio accepts up to `backlog`
connections at a time and calls connection_made one turn of the loop later.
"""

import json
import logging
import resource
import sys
from dataclasses import dataclass
from typing import ClassVar

import h11
from uvicorn.protocols.http.h11_impl import STATUS_PHRASES, H11Protocol

BACKLOG = 128  # uvicorn's backlog: connections queued by the kernel, and accepted at once by asyncio
FILES_RESERVED = 3 * BACKLOG + 128  # below the file limit: accepted but not yet capped, and the server's own files
MAX_CONNECTIONS = 1024  # the default cap, wherever the file limit allows more
logger = logging.getLogger("uvicorn.error")


@dataclass(frozen=True)
class ConnectionLimits:
    read_timeout: float  # seconds for a request's head and body to arrive
    max_connections: int


def raise_file_limit() -> int:
    """Raise this process's open-file limit to its hard limit, as Go and nginx do; the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 65536  # macOS: unlimited, but refuses more than its cap
    if soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError):
            pass
    return soft


def default_max_connections(file_limit: int) -> int:
    """The file limit less FILES_RESERVED (half of it, if that is less), at most MAX_CONNECTIONS."""
    return max(1, min(MAX_CONNECTIONS, file_limit - min(FILES_RESERVED, file_limit // 2)))


def error_response(status: int, message: str, error_type: str) -> bytes:
    """A whole HTTP response in TEI's error shape, written straight to a connection that then closes."""
    body = json.dumps({"error": message, "error_type": error_type}, separators=(",", ":")).encode()
    head = (
        f"HTTP/1.1 {status} {STATUS_PHRASES[status].decode()}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


def protocol_class(limits: ConnectionLimits) -> type[H11Protocol]:
    """The protocol class to give uvicorn (`http=`), with these limits."""
    return type("LimitedH11Protocol", (LimitedH11Protocol,), {"limits": limits})


class LimitedH11Protocol(H11Protocol):
    limits: ClassVar[ConnectionLimits]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.read_timer = None  # running from a request's first byte to its last
        self.waiting_since = 0.0  # when it began waiting for its current request: the oldest goes first

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.waiting_since = self.loop.time()
        self.start_read_timer()  # uvicorn's keep-alive timer starts only after a first response
        if len(self.connections) > self.limits.max_connections:
            self.make_room()

    def connection_lost(self, exc) -> None:
        self.stop_read_timer()
        super().connection_lost(exc)

    def make_room(self) -> None:
        """Close the connection that has waited longest for its request; this one if all are being answered."""
        waiting = [
            other
            for other in self.connections
            if other is not self and not other.transport.is_closing() and other.receiving()
        ]
        if waiting:
            oldest = min(waiting, key=lambda other: other.waiting_since)
            logger.warning(
                "%d connections open (--max-connections): closed the one that waited longest for its request",
                self.limits.max_connections,
            )
            oldest.transport.close()
        else:
            logger.warning(
                "%d connections open (--max-connections), all being answered: closed a new one",
                self.limits.max_connections,
            )
            self.transport.close()

    def receiving(self) -> bool:
        """Waiting for its request's head or body, or idle between requests: not being answered."""
        return self.conn.their_state in (h11.IDLE, h11.SEND_BODY)

    def request_begun(self) -> bool:
        return self.conn.their_state is h11.SEND_BODY or bool(self.conn.trailing_data[0])

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state not in (h11.IDLE, h11.SEND_BODY):
            self.stop_read_timer()  # all of it arrived
        elif self.read_timer is None and self.request_begun():
            self.start_read_timer()  # the first bytes of another request on a kept-alive connection

    def on_response_complete(self) -> None:
        self.waiting_since = self.loop.time()
        super().on_response_complete()

    def start_read_timer(self) -> None:
        self.stop_read_timer()
        self.read_timer = self.loop.call_later(self.limits.read_timeout, self.read_timed_out)

    def stop_read_timer(self) -> None:
        if self.read_timer is not None:
            self.read_timer.cancel()
            self.read_timer = None

    def read_timed_out(self) -> None:
        self.read_timer = None
        if self.transport.is_closing():
            return
        if not self.request_begun():
            self.transport.close()  # opened and silent: nobody to answer
            return
        logger.warning("closed a connection whose request did not arrive whole within --read-timeout")
        self.answer_and_close(
            408, f"the request did not arrive whole within {self.limits.read_timeout:g} s (--read-timeout)", "timeout"
        )

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request h11 cannot parse, in TEI's shape and with h11's reason."""
        reason = sys.exc_info()[1]  # uvicorn calls this inside its `except h11.RemoteProtocolError`
        detail = f": {reason}" if isinstance(reason, h11.RemoteProtocolError) else ""
        self.answer_and_close(400, f"not a valid HTTP request{detail}", "validation")

    def answer_and_close(self, status: int, message: str, error_type: str) -> None:
        """An error in TEI's shape, written straight to the connection, which then closes; only closed if the app
        has begun answering the request (413 or 401 sent before its body arrived)."""
        answering = self.cycle is not None and not self.cycle.response_complete
        if not (answering and self.cycle.response_started):
            if answering:
                self.cycle.disconnected = True  # the app's answer, if it comes, goes nowhere
            self.transport.write(error_response(status, message, error_type))
        self.transport.close()
