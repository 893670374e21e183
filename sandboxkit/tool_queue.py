"""Running one session's tool calls on host threads, within fixed bounds.

The sandbox decides how many tool calls it makes and when; the host decides how many it runs. A
:class:`ToolQueue` runs at most ``concurrency`` calls at once, on threads it starts when needed
(up to that number) and lets go after a while idle; further calls wait in arrival order, at most
``capacity`` of them. Calls are tagged with the execute that made them, and :meth:`cancel` takes
back the waiting calls of an execute that has ended, so none of them starts afterwards.
"""

from __future__ import annotations

import collections
import threading
from typing import Callable

__all__ = ["ToolQueue"]

Job = Callable[[], None]


class ToolQueue:
    """Bounded, ordered execution of tool-call jobs; thread-safe."""

    IDLE_SECONDS = 30.0

    def __init__(self, concurrency: int, capacity: int, name: str) -> None:
        self._concurrency = concurrency
        self._capacity = capacity
        self._name = name
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._waiting: collections.deque[tuple[str, Job]] = collections.deque()
        self._threads = 0
        self._idle = 0
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
            free = self._idle + self._concurrency - self._threads
            if self._closed or len(self._waiting) >= self._capacity + free:
                return False
            self._waiting.append((exec_id, job))
            if self._idle:
                self._work.notify()
            # An idle worker counts as idle until it wakes: start more while calls outnumber them.
            if len(self._waiting) > self._idle and self._threads < self._concurrency:
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
            self._work.notify_all()
            return taken

    def _serve(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
                while not self._waiting and not self._closed:
                    if not self._work.wait(self.IDLE_SECONDS) and not self._waiting:
                        break
                self._idle -= 1
                if not self._waiting:
                    self._threads -= 1
                    return
                _, job = self._waiting.popleft()
                self._running += 1
            try:
                job()
            finally:
                with self._lock:
                    self._running -= 1
