"""Running one session's tool calls on host threads, within fixed bounds.

The sandbox decides how many tool calls it makes and when; the host decides how many it runs. A
:class:`ToolQueue` runs at most ``concurrency`` calls at once, on threads it starts when needed
(up to that number) and lets go after a while idle; further calls wait in arrival order, at most
``capacity`` of them. Calls are tagged with the execute that made them, and :meth:`cancel` takes
back the waiting calls of an execute that has ended, so none of them starts afterwards.
"""

from __future__ import annotations

import _thread
import collections
import threading
from typing import Callable

__all__ = ["ToolQueue"]

Job = Callable[[], None]


class _Worker:
    """A parked worker thread: it sleeps on ``wake`` until it is handed ``job`` (None: stop)."""

    __slots__ = ("job", "wake")

    def __init__(self) -> None:
        self.job: Job | None = None
        self.wake = _thread.allocate_lock()
        self.wake.acquire()


class ToolQueue:
    """Bounded, ordered execution of tool-call jobs; thread-safe."""

    IDLE_SECONDS = 30.0

    def __init__(self, concurrency: int, capacity: int, name: str) -> None:
        self._concurrency = concurrency
        self._capacity = capacity
        self._name = name
        self._lock = threading.Lock()
        self._waiting: collections.deque[tuple[str, Job]] = collections.deque()
        self._idle: list[_Worker] = []
        self._threads = 0
        self._running = 0
        self._closed = False

    @property
    def running(self) -> int:
        """Calls running now."""
        return self._running

    def submit(self, exec_id: str, job: Job) -> bool:
        """Queue ``job`` for the execute ``exec_id``; False (and nothing queued) when closed, or
        when ``capacity`` calls already wait beyond what free or startable workers will take."""
        with self._lock:
            free = len(self._idle) + self._concurrency - self._threads
            if self._closed or len(self._waiting) >= self._capacity + free:
                return False
            if self._idle and not self._waiting:  # hand it straight to a parked worker
                worker = self._idle.pop()
                worker.job = job
                self._running += 1
                worker.wake.release()
                return True
            self._waiting.append((exec_id, job))
            if self._threads < self._concurrency:
                self._threads += 1
                threading.Thread(target=self._serve, name=f"sandboxkit-tool-{self._name}", daemon=True).start()
            return True

    def cancel(self, exec_id: str) -> list[Job]:
        """Take back the calls of ``exec_id`` that have not started; return them, in order."""
        with self._lock:
            taken = [job for owner, job in self._waiting if owner == exec_id]
            if taken:
                self._waiting = collections.deque(item for item in self._waiting if item[0] != exec_id)
            return taken

    def close(self) -> list[Job]:
        """Refuse new calls and take back every waiting one; running calls finish on their own."""
        with self._lock:
            self._closed = True
            taken = [job for _, job in self._waiting]
            self._waiting.clear()
            for worker in self._idle:
                worker.job = None
                worker.wake.release()
            self._idle.clear()
            return taken

    def _serve(self) -> None:
        worker = _Worker()
        while True:
            with self._lock:
                if self._waiting:
                    _, job = self._waiting.popleft()
                    self._running += 1
                elif self._closed:
                    self._threads -= 1
                    return
                else:
                    self._idle.append(worker)
                    job = None
            if job is None:
                if not worker.wake.acquire(True, self.IDLE_SECONDS):
                    with self._lock:
                        if worker in self._idle:  # nobody handed it anything: let the thread go
                            self._idle.remove(worker)
                            self._threads -= 1
                            return
                    worker.wake.acquire()  # handed a job just as the wait ran out
                job, worker.job = worker.job, None
                if job is None:
                    continue  # woken by close()
            try:
                job()
            finally:
                with self._lock:
                    self._running -= 1
