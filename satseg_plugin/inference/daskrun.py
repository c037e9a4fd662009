"""What every satseg run on Dask does the same way: the ``--cluster`` value, the client, cancel, the task loop.

``segment --cluster`` (``cluster.py``, one task per block of the output grid)
and ``python -m training.dataset build --cluster`` (``training/dataset/cluster.py``,
one task per chunk of tiles) share this: ``parse_cluster`` reads
``local``/``local:N``/``tcp://HOST:PORT``, ``connect`` starts a ``LocalCluster``
of worker processes on loopback or connects to a scheduler, ``run_tasks``
submits one task per job and reports each as it ends, and cancel (or Ctrl-C)
drops the queued tasks and sets a Dask ``Event`` that the running ones poll
through ``CancelFlag``.

A worker that dies takes its task with it; the scheduler gives the task to
another worker (up to ``distributed.scheduler.allowed-failures`` times). An
exception is retried once, then reported to the caller as a failure.

Dask is imported inside the functions only: importing this module costs
nothing, and the single-process paths never import Dask.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from .errors import Cancelled, SatsegError

#: How long ``connect`` waits for a scheduler at ``tcp://HOST:PORT`` to answer.
CONNECT_TIMEOUT = "20s"

_LOCAL = re.compile(r"^local(?::(\d+))?$")
J = TypeVar("J")


class ClusterError(SatsegError):
    """A cluster address or worker count that cannot be used, or a scheduler that does not answer."""


def parse_cluster(text: str | None) -> tuple[str, int | str]:
    """``local`` / ``local:N`` -> ``("local", N)`` (N: the cores); ``tcp://HOST:PORT`` -> ``("address", it)``."""
    value = (text or "local").strip()
    m = _LOCAL.match(value)
    if m:
        n = int(m.group(1)) if m.group(1) else (os.cpu_count() or 1)
        if n < 1:
            raise ClusterError(f"a local cluster needs at least 1 worker, not {n}")
        return "local", n
    if re.match(r"^(tcp|tls|ucx|inproc)://[^\s/]+$", value):
        return "address", value
    raise ClusterError(
        f"--cluster takes local, local:N or a scheduler address tcp://HOST:PORT, not {value!r}"
    )


@contextlib.contextmanager
def connect(cluster: str | Any, threads_per_worker: int = 1) -> Iterator[Any]:
    """A ``distributed.Client`` for a ``--cluster`` value, closed (with its ``LocalCluster``) at the end.

    ``cluster`` may also be a ``Client`` already made: it is used as it is
    and left open. ``ClusterError`` when no scheduler answers at the address.
    """
    from distributed import Client, LocalCluster

    if isinstance(cluster, Client):
        yield cluster
        return
    kind, value = parse_cluster(cluster)
    local = None
    if kind == "address":
        try:
            client = Client(str(value), timeout=CONNECT_TIMEOUT)
        except (OSError, TimeoutError) as exc:
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ClusterError(f"no Dask scheduler answers at {value}: {text}") from None
    else:
        local = LocalCluster(
            n_workers=int(value),
            threads_per_worker=threads_per_worker,
            processes=True,
            dashboard_address=None,
            host="127.0.0.1",
        )
        client = Client(local)
    try:
        yield client
    finally:
        client.close()
        if local is not None:
            local.close()


def new_cancel_name() -> str:
    """A fresh name for the Dask ``Event`` that stops one run."""
    return f"satseg-cancel-{uuid.uuid4().hex}"


class CancelFlag:
    """In a task: whether the run's cancel ``Event`` named ``name`` is set.

    The event lives on the scheduler; asking it costs a round trip, so the
    flag asks at most every ``every`` seconds and answers from memory between.
    ``name`` None: never cancelled (a task run outside a cluster).
    """

    def __init__(self, name: str | None, every: float = 0.5) -> None:
        self.every = every
        self._event = None
        self._asked = float("-inf")
        self._set = False
        if name:
            from distributed import Event

            self._event = Event(name)

    def __call__(self) -> bool:
        now = time.monotonic()
        if self._event is not None and not self._set and now - self._asked >= self.every:
            self._asked = now
            self._set = bool(self._event.is_set())
        return self._set


def failure_reason(exc: BaseException) -> str:
    """``Type: first line of the message``: how a failed task is listed."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def run_tasks(
    client: Any,
    fn: Callable[[J], Any],
    jobs: Sequence[J],
    key: Callable[[J], str],
    cancel_name: str,
    on_done: Callable[[J, Any, str | None], None],
    cancelled: Callable[[], bool] = lambda: False,
    cleanup: Callable[[J], None] | None = None,
    fatal: tuple[type[BaseException], ...] = (),
) -> None:
    """Run ``fn(job)`` for every job on ``client``; ``on_done(job, result, None)`` or ``(job, None, reason)``.

    Jobs are prioritised in their order. An exception is retried once, then
    reported with its ``failure_reason``; one of the ``fatal`` types (a refused
    token) is raised here instead and stops the run. ``cancelled()`` is asked
    every half second: it, Ctrl-C or a fatal failure drops the queued tasks,
    sets the ``Event`` named ``cancel_name`` (which running tasks poll with
    ``CancelFlag`` to stop and clean up after themselves), waits up to a minute
    for them, calls ``cleanup(job)`` for every job that did not finish and
    re-raises (``Cancelled`` for a cancel).
    """
    from distributed import Event, wait

    event = Event(cancel_name, client=client)
    futures = {
        client.submit(
            fn,
            job,
            key=key(job),
            retries=1,  # an exception; a worker that dies is the scheduler's to retry
            pure=False,
            priority=-i,
        ): job
        for i, job in enumerate(jobs)
    }
    pending = set(futures)
    finished: set[int] = set()
    try:
        while pending:
            if cancelled():
                raise Cancelled("cancelled")
            try:
                done, pending_now = wait(list(pending), timeout=0.5, return_when="FIRST_COMPLETED")
            except TimeoutError:
                continue
            pending = set(pending_now)
            for fut in done:
                job = futures[fut]
                if fut.status == "finished":
                    result = fut.result()
                    finished.add(id(job))
                    on_done(job, result, None)
                elif fut.status == "error":
                    exc = fut.exception()
                    if fatal and isinstance(exc, fatal):
                        raise exc
                    on_done(job, None, failure_reason(exc))
                else:
                    on_done(job, None, f"the scheduler {fut.status} it")
    except BaseException:
        # Stop scheduling: drop the queued tasks, and let the running ones see the event,
        # stop and remove their own half-written files.
        with contextlib.suppress(Exception):
            event.set()
            running = {k for keys in client.processing().values() for k in keys}
            client.cancel([f for f in pending if f.key not in running])
            wait([f for f in pending if f.key in running], timeout=60)
        if cleanup is not None:
            for job in jobs:
                if id(job) not in finished:
                    cleanup(job)
        raise
