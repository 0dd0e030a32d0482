"""The server's log: uvicorn's format for every logger that reports a fault, and a repeated record logged once a minute.

Under an attack or a fault that every request meets, the same record comes once per connection or per
request: asyncio's "socket.accept() out of system resource" (before this filter, 117 MB of tracebacks in
20 s), uvicorn's "Invalid HTTP request received.", a text the model fails on. The first of a kind is
logged with its traceback; the same kind again within the interval is counted, not logged; the next one
after it says how many were left out.
"""

import copy
import logging
import threading
import time

import uvicorn.config

REPEAT_INTERVAL = 60  # seconds
FAULT_LOGGERS = ("uvicorn.error", "asyncio", "zh_sentiment.serve")


class OncePerInterval(logging.Filter):
    """Lets a kind of record through once per `interval` seconds; the next one says how many were dropped.

    A kind is the logger, the level, the message's first line (asyncio's second line names the socket)
    and the exception's type.
    """

    def __init__(self, interval: float = REPEAT_INTERVAL):
        super().__init__()
        self.interval = interval
        self.kinds: dict[tuple, tuple[float, int]] = {}  # kind -> (when last let through, dropped since)
        self.lock = threading.Lock()  # the batcher's thread logs too

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[0].__name__ if record.exc_info and record.exc_info[0] else None
        kind = (record.name, record.levelno, str(record.msg).partition("\n")[0], error)
        now = time.monotonic()
        with self.lock:
            last, dropped = self.kinds.get(kind, (None, 0))
            if last is not None and now - last < self.interval:
                self.kinds[kind] = (last, dropped + 1)
                return False
            self.kinds[kind] = (now, 0)
        if dropped:
            record.msg = f"{record.msg} ({dropped:,} more like this in the {now - last:.0f} s before were not logged)"
        return True


def log_config(interval: float = REPEAT_INTERVAL) -> dict:
    """uvicorn's logging config, with asyncio's and this package's faults through its handler, all rate-limited."""
    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config["filters"] = {"once_per_interval": {"()": OncePerInterval, "interval": interval}}
    for name in FAULT_LOGGERS:
        logger = config["loggers"].setdefault(name, {"level": "INFO"})
        logger["filters"] = ["once_per_interval"]
        if name != "uvicorn.error":  # that one reaches the handler through "uvicorn"
            logger.update(handlers=["default"], propagate=False)
    return config
