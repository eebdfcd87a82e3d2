"""A bounded FIFO of job ids shared by the I/O loop (producer) and the workers (consumers).

queue.Queue cannot remove a cancelled job or tell a job its position, so this is a deque under a
Condition; that is all the "broker" the server needs.
"""

from __future__ import annotations

import threading
import time
from collections import deque


class QueueFull(Exception):
    pass


class JobQueue:
    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError("queue size must be at least 1")
        self.maxsize = maxsize
        self._items: deque[str] = deque()
        self._cond = threading.Condition()
        self._closed = False

    def put(self, job_id: str) -> int:
        """Append a job; returns its 1-based position. Raises QueueFull."""
        with self._cond:
            if len(self._items) >= self.maxsize:
                raise QueueFull(f"{len(self._items)} jobs are waiting (the limit is {self.maxsize})")
            self._items.append(job_id)
            self._cond.notify()
            return len(self._items)

    def get(self, timeout: float) -> str | None:
        """The oldest job, or None after `timeout` seconds or once closed."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._items and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)
            return self._items.popleft() if self._items and not self._closed else None

    def remove(self, job_id: str) -> bool:
        with self._cond:
            try:
                self._items.remove(job_id)
            except ValueError:
                return False
            return True

    def position(self, job_id: str) -> int | None:
        with self._cond:
            try:
                return self._items.index(job_id) + 1
            except ValueError:
                return None

    def snapshot(self) -> list[str]:
        with self._cond:
            return list(self._items)

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    def close(self) -> list[str]:
        """Stop handing out jobs; returns those still waiting."""
        with self._cond:
            self._closed = True
            left = list(self._items)
            self._items.clear()
            self._cond.notify_all()
            return left
