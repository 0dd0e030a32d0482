"""Dynamic batching: the texts of concurrent requests are scored together by one worker thread.

Request handlers put texts on a queue and await their results. The worker takes every text
waiting, counts its tokens, and scores as many as fit in the token budget in one
Classifier.score call (which sorts them longest first and pads each forward pass only to its
longest text). While it scores, new texts queue up, so the busier the server, the fuller the
batches: throughput under many clients approaches offline batch throughput.

Only this thread ever calls the classifier: score() is CPU-bound and not meant to run
concurrently, and a fast tokenizer must not be used from two threads at once.

One text cannot fail another: if counting or scoring a batch raises, each of its texts is tried
alone, so only the request whose text is at fault gets the error (424), and its traceback is logged
once per kind and minute (serve/logs.py), not once per request.
"""

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from zh_sentiment.inference import Classifier, Note

STOP = object()  # put on the queue to end the worker
logger = logging.getLogger("zh_sentiment.serve")


@dataclass
class Job:
    """One text of one request, and where its result goes."""

    text: str
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    cost: int = 0  # tokens in a batch, counted by the worker (0: not yet)

    def wanted(self) -> bool:
        """False once its request was cancelled (the client went away): its text is not scored.

        Read from the worker thread; at worst a job cancelled this instant is scored for nothing.
        """
        return not self.future.done()

    def deliver(self, outcome: tuple[np.ndarray, list[Note]] | BaseException) -> None:
        self.loop.call_soon_threadsafe(settle, self.future, outcome)


def settle(future: asyncio.Future, outcome) -> None:
    """On the event loop: set the job's result or error, unless its request was cancelled meanwhile."""
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


class Batcher:
    """Scores texts from many requests in batches of at most `max_batch_tokens` tokens.

    `on_batch(inputs, tokens, seconds)` is called after each batch (for the metrics).
    """

    def __init__(self, classifier: Classifier, max_batch_tokens: int, batch_size: int, on_batch=None):
        self.classifier = classifier
        self.max_batch_tokens = max_batch_tokens
        self.batch_size = batch_size
        self.on_batch = on_batch or (lambda inputs, tokens, seconds: None)
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.waiting: deque[Job] = deque()  # counted, not yet scored (only the worker touches it)
        self.thread = threading.Thread(target=self.work, name="batcher", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        """End the worker once the texts already queued are scored."""
        self.queue.put(STOP)
        self.thread.join()

    def alive(self) -> bool:
        return self.thread.is_alive()

    def depth(self) -> int:
        """Texts queued or waiting for a batch."""
        return self.queue.qsize() + len(self.waiting)

    async def score(self, texts: list[str]) -> list[tuple[np.ndarray, list[Note]]]:
        """Each text's raw scores and notes. Cancelling this (a client that went away) drops its texts.

        RuntimeError naming the first text the model failed on, as inputs[i].
        """
        loop = asyncio.get_running_loop()
        jobs = [Job(text, loop.create_future(), loop) for text in texts]
        for job in jobs:
            self.queue.put(job)
        try:
            # every outcome, errors too: an error left unread would be logged again by asyncio
            outcomes = await asyncio.gather(*(job.future for job in jobs), return_exceptions=True)
        except asyncio.CancelledError:
            for job in jobs:
                job.future.cancel()
            raise
        for i, outcome in enumerate(outcomes):
            if isinstance(outcome, BaseException):
                raise RuntimeError(f"inputs[{i}]: {outcome}")
        return outcomes

    def work(self) -> None:
        stopping = False
        while not (stopping and not self.waiting):
            if not self.waiting and not stopping:
                stopping = self.take(self.queue.get())
            while not stopping:  # everything queued meanwhile joins the choice of the next batch
                try:
                    stopping = self.take(self.queue.get_nowait())
                except queue.Empty:
                    break
            self.count_new()
            batch = self.next_batch()
            if batch:
                self.run(batch)

    def take(self, item) -> bool:
        """Add a queued item to the waiting jobs; True if it is the signal to stop."""
        if item is STOP:
            return True
        self.waiting.append(item)
        return False

    def count_new(self) -> None:
        """Token counts for the waiting jobs that have none yet (one tokenizer call for them all)."""
        new = [job for job in self.waiting if job.cost == 0]
        if not new:
            return
        try:
            costs = self.classifier.count_tokens([job.text for job in new])
        except Exception:  # one text at fault must not fail the others: count each alone to find it
            costs = [self.count_alone(job) for job in new]
        for job, cost in zip(new, costs):
            if cost is not None:
                job.cost = max(1, cost)  # an empty text still takes a row

    def count_alone(self, job: Job) -> int | None:
        """The job's token count; None if counting fails (the job then fails)."""
        try:
            return self.classifier.count_tokens([job.text])[0]
        except Exception as err:
            self.fail(job, err)
            return None

    def next_batch(self) -> list[Job]:
        """The oldest waiting jobs whose tokens fit the budget (always at least one)."""
        batch, tokens = [], 0
        while self.waiting:
            job = self.waiting[0]
            if not job.wanted() or job.cost == 0:
                self.waiting.popleft()
                continue
            if batch and tokens + job.cost > self.max_batch_tokens:
                break
            batch.append(self.waiting.popleft())
            tokens += job.cost
        return batch

    def run(self, batch: list[Job]) -> None:
        start = time.perf_counter()
        try:
            scores, notes = self.classifier.score(
                [job.text for job in batch], batch_size=self.batch_size, max_batch_tokens=self.max_batch_tokens
            )
        except Exception as err:
            if len(batch) == 1:
                self.fail(batch[0], err)
            else:  # one text at fault must not fail the others: score each alone to find it
                for job in batch:
                    self.run([job])
            return
        # counted before any answer goes out: a client reading /metrics after its answer sees its batch
        self.on_batch(len(batch), sum(job.cost for job in batch), time.perf_counter() - start)
        for job, row, job_notes in zip(batch, scores, notes):
            job.deliver((row, job_notes))

    def fail(self, job: Job, err: Exception) -> None:
        """Give the job's request the error (its client gets 424) and log it (once a minute for each kind)."""
        logger.error("the model failed on a text; its request gets 424", exc_info=err)
        if job in self.waiting:
            self.waiting.remove(job)
        job.deliver(RuntimeError(f"the model failed on this text: {type(err).__name__}: {err}"))
