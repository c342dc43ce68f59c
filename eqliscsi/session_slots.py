"""A cross-process limit on concurrent CLI sessions to one group.

The directory holds ``slot-0`` ... ``slot-<N-1>``.  A process claims a slot by taking
``fcntl.flock(LOCK_EX | LOCK_NB)`` on an open descriptor of one of these files and keeps
the descriptor open for as long as its CLI session lives.  The kernel drops the lock when
the descriptor is closed, including when the process is killed, so no stale lock can
outlive its owner.  Slots are tried in random order; when all are taken the claimer sleeps
a short random interval and tries again, until its deadline (``SlotTimeout``).

The holder's PID is written into the slot file for diagnostics only.
"""

from __future__ import annotations

import errno
import fcntl
import os
import random
import time
from types import TracebackType
from typing import Optional, Type

from eqliscsi.errors import InvalidValue, SlotTimeout

DEFAULT_SLOT_DIR = "/var/lib/one/.eqliscsi-slots"
DEFAULT_SLOTS = 5
POLL_INTERVAL = (0.02, 0.1)


class SlotLease:
    """A claimed slot: release it with ``release()`` or by leaving the ``with`` block."""

    def __init__(self, fd: int, path: str) -> None:
        self._fd: Optional[int] = fd
        self.path = path

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Give the slot back (closing the descriptor drops the lock); idempotent."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __enter__(self) -> SlotLease:
        return self

    def __exit__(self, exc_type: Optional[Type[BaseException]],
                 exc: Optional[BaseException], tb: Optional[TracebackType]) -> None:
        self.release()


class SessionSlots:
    """``count`` session slots in ``directory`` (created if missing, mode 0770)."""

    def __init__(self, directory: str = DEFAULT_SLOT_DIR, count: int = DEFAULT_SLOTS) -> None:
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise InvalidValue(f"invalid number of session slots {count!r}")
        self.directory = directory
        self.count = count

    def acquire(self, timeout: float) -> SlotLease:
        """Claim a free slot, waiting at most ``timeout`` seconds (``SlotTimeout``)."""
        os.makedirs(self.directory, mode=0o770, exist_ok=True)
        deadline = time.monotonic() + max(timeout, 0.0)
        while True:
            for slot in random.sample(range(self.count), self.count):
                lease = self._try(os.path.join(self.directory, f"slot-{slot}"))
                if lease is not None:
                    return lease
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SlotTimeout(
                    f"all {self.count} CLI session slots in {self.directory} stayed busy "
                    f"for {timeout:g} s (other eqliscsi processes hold them)"
                )
            time.sleep(min(random.uniform(*POLL_INTERVAL), remaining))  # noqa: S311

    @staticmethod
    def _try(path: str) -> Optional[SlotLease]:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o660)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return SlotLease(fd, path)
