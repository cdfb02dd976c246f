"""Delivery of alerts to webhooks, off the event loop: bounded, retried, counted.

:class:`Webhooks` gives each webhook URL a queue of at most :data:`QUEUE_SIZE` alerts (a full
queue drops the alert, counted in ``alerts_dropped``) and :data:`WORKERS_PER_WEBHOOK`
deliveries in flight, so a webhook that hangs holds up only its own alerts. Each attempt is a
blocking ``urllib`` POST in a daemon thread with a timeout; a connection failure, a timeout,
a 5xx, 408 or 429 is retried after :data:`BACKOFF_BASE` s, then twice that, ... at most
:data:`BACKOFF_CAP` s, for :data:`ATTEMPTS` attempts in all. Any other answer but a 2xx (a
4xx, a redirect) fails at once: another attempt would get the same.

A webhook URL's path and query often hold a secret (Slack, Discord, Teams): log lines show
only its scheme, host and port.
"""

from __future__ import annotations

import asyncio
import functools
import http.client
import logging
import queue
import random
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

__all__ = ["ATTEMPTS", "QUEUE_SIZE", "Alert", "AlertStats", "Webhooks"]

logger = logging.getLogger("relay")

ATTEMPTS = 4
BACKOFF_BASE = 0.5
BACKOFF_CAP = 8.0
QUEUE_SIZE = 256
WORKERS_PER_WEBHOOK = 2

_RETRIED_STATUSES = frozenset({408, 429})  # and every 5xx


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert, encoded once for every webhook and every attempt."""

    alert_id: str
    event: str
    run_id: str
    body: bytes  # the JSON payload


@dataclass
class AlertStats:
    """Counters served on ``/stats``; an alert sent to two webhooks counts twice."""

    alerts_sent: int = 0  # delivered (a 2xx answer)
    alerts_failed: int = 0  # given up: attempts exhausted, or an answer not worth retrying
    alerts_retried: int = 0  # attempts after the first
    alerts_dropped: int = 0  # refused because the webhook's queue was full
    alerts_pending: int = 0  # queued or being delivered now


class Webhooks:
    """Every webhook's queue and workers.

    Args:
        urls: the webhooks; every alert goes to each of them.
        timeout: seconds one attempt may wait (to connect, and for each read).
    """

    def __init__(self, urls: Sequence[str], timeout: float) -> None:
        self.stats = AlertStats()
        self._threads = _Threads(WORKERS_PER_WEBHOOK * len(urls))
        self._hooks = [_Webhook(url, timeout, self.stats, self._threads) for url in urls]
        self._workers: list[asyncio.Task[None]] = []

    def __bool__(self) -> bool:
        return bool(self._hooks)

    def start(self) -> None:
        """Start the workers (on the running loop)."""
        for hook in self._hooks:
            self._workers += [asyncio.create_task(hook.work()) for _ in range(WORKERS_PER_WEBHOOK)]

    def offer(self, alert: Alert) -> None:
        """Queue ``alert`` for every webhook (dropped, counted and logged where one is full)."""
        for hook in self._hooks:
            hook.offer(alert)

    async def close(self, grace: float) -> None:
        """Wait up to ``grace`` seconds for the pending deliveries, then stop the workers."""
        try:
            async with asyncio.timeout(grace):
                await asyncio.gather(*(hook.queue.join() for hook in self._hooks))
        except TimeoutError:
            logger.warning(
                "shutting down with %d alert deliveries pending: they are lost",
                self.stats.alerts_pending,
            )
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._threads.stop()

    def summary(self) -> dict[str, int]:
        """The counters, by name."""
        return asdict(self.stats)


class _Webhook:
    """One webhook: its queue of alerts and how they are delivered."""

    def __init__(self, url: str, timeout: float, stats: AlertStats, threads: _Threads) -> None:
        self.url = url
        self.where = _where(url)  # what the log says
        self.timeout = timeout
        self.stats = stats
        self.threads = threads
        self.queue: asyncio.Queue[Alert] = asyncio.Queue(QUEUE_SIZE)

    def offer(self, alert: Alert) -> None:
        try:
            self.queue.put_nowait(alert)
        except asyncio.QueueFull:
            self.stats.alerts_dropped += 1
            logger.warning(
                "dropped the %s alert of run %r: %d alerts already wait for %s",
                *(alert.event, alert.run_id, QUEUE_SIZE, self.where),
            )
            return
        self.stats.alerts_pending += 1

    async def work(self) -> None:
        while True:
            alert = await self.queue.get()
            try:
                await self._deliver(alert)
            finally:
                self.stats.alerts_pending -= 1
                self.queue.task_done()

    async def _deliver(self, alert: Alert) -> None:
        for attempt in range(1, ATTEMPTS + 1):
            try:
                await self.threads.call(functools.partial(_post, self.url, alert, self.timeout))
            except Exception as exc:
                why, retry = _failure(exc)
                if not retry or attempt == ATTEMPTS:
                    self.stats.alerts_failed += 1
                    logger.warning(
                        "could not deliver the %s alert of run %r to %s (attempts: %d): %s",
                        *(alert.event, alert.run_id, self.where, attempt, why),
                    )
                    return
                self.stats.alerts_retried += 1
                delay = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (attempt - 1))
                await asyncio.sleep(delay * random.uniform(1.0, 1.2))  # jitter: no herd
            else:
                self.stats.alerts_sent += 1
                return


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A webhook that redirects is misconfigured: a 3xx fails the delivery (urllib would
    turn the POST into a GET without its body)."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def _post(url: str, alert: Alert, timeout: float) -> None:
    """POST one alert; blocking, for a worker thread. Raises unless the answer is a 2xx."""
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "fl-stream-relay",
        "X-FL-Stream-Event": alert.event,
        "X-FL-Stream-Alert-Id": alert.alert_id,
    }
    request = urllib.request.Request(url, data=alert.body, headers=headers, method="POST")
    with _OPENER.open(request, timeout=timeout) as answer:
        answer.read(65536)


def _failure(exc: Exception) -> tuple[str, bool]:
    """What went wrong with an attempt, and whether another attempt may help."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code}", exc.code >= 500 or exc.code in _RETRIED_STATUSES
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason), True
    if isinstance(exc, OSError | http.client.HTTPException):  # timeouts, resets, bad answers
        return (f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__), True
    return f"{type(exc).__name__}: {exc}", False


def _where(url: str) -> str:
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}"


class _Threads:
    """``size`` daemon threads that run blocking calls for the event loop.

    Not a ``ThreadPoolExecutor`` (nor ``asyncio.to_thread``): the interpreter joins those
    threads at exit, so a webhook that never answers would hold up the relay's exit.
    """

    def __init__(self, size: int) -> None:
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._size = size
        for index in range(size):
            name = f"relay-webhook-{index}"
            threading.Thread(target=self._work, name=name, daemon=True).start()

    async def call(self, job: Callable[[], None]) -> None:
        """Run ``job`` in one of the threads; raise what it raised."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._jobs.put((job, loop, done))
        await done

    def stop(self) -> None:
        """Let every thread end once it is idle."""
        for _ in range(self._size):
            self._jobs.put(None)

    def _work(self) -> None:
        while (item := self._jobs.get()) is not None:
            job, loop, done = item
            error: Exception | None = None
            try:
                job()
            except Exception as exc:
                error = exc
            try:
                loop.call_soon_threadsafe(_settle, done, error)
            except RuntimeError:  # the loop has closed: the relay is exiting
                return


def _settle(done: asyncio.Future[None], error: Exception | None) -> None:
    if done.cancelled():
        return
    if error is None:
        done.set_result(None)
    else:
        done.set_exception(error)
