"""The OS-level lock of one GPU, so that one GPU runs one pipeline also when a process outlives
its database session.

The database's GPU lock frees the moment a session dies, while that worker's pipeline thread
runs on until its next step notices. So a worker also holds an flock on a file named for its
(host, device), taken before each claim and released only once its pipeline has stopped: a
second process on the same GPU of this machine waits for it, whatever happened to the first's
session. The kernel frees it when the process dies, so a crash never leaves it held.

Two files make the wait fair: a waiter holds the `.queue` file while it waits for the `.lock`
file, so the holder that just released `.lock` queues behind it instead of taking it straight
back (workers on one GPU take turns, as they did in the database's lock queue).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import hashlib
import logging
import os
import threading
import time
from pathlib import Path
from urllib.parse import quote

log = logging.getLogger(__name__)

RETRY_S = 0.01  # a busy flock is retried this often: a syscall, no database round trip
LOG_EVERY_S = 60.0  # workers sharing a GPU wait at every job: say so once a minute, not each time


def _file_stem(gpu: str) -> str:
    """A file name for the GPU host/device: readable, and short enough for any filesystem."""
    safe = quote(gpu, safe="")
    if len(safe) <= 180:
        return safe
    return f"{safe[:120]}-{hashlib.sha256(gpu.encode()).hexdigest()[:16]}"


class DeviceLock:
    """flock on `<directory>/<host/device quoted>.lock`, held while this process may run a job.

    `pipeline` is the executor whose one thread runs the pipeline: release_when_idle hands the
    release to it, so the lock outlives whatever that thread is still computing.
    """

    def __init__(
        self,
        directory: Path,
        gpu: str,
        pipeline: concurrent.futures.Executor,
        *,
        retry_s: float = RETRY_S,
    ) -> None:
        self.gpu = gpu
        stem = _file_stem(gpu)
        self._lock = _LockFile(directory / f"{stem}.lock")
        self._queue = _LockFile(directory / f"{stem}.queue")
        self.path = self._lock.path
        self._pipeline = pipeline
        self._retry_s = retry_s
        self._mutex = threading.Lock()  # release may run in the pipeline thread
        self._held = False
        self._deferred = False
        self._logged_at: float | None = None

    @property
    def held(self) -> bool:
        return self._held

    async def acquire(self, stopping: asyncio.Event, wake: asyncio.Event) -> bool:
        """Take the lock, waiting (on the event loop, never blocking it) while another process
        holds it; False when `stopping` is set first. A busy lock is tried again every retry_s,
        and at once when `wake` is set (a job ended somewhere; the stop sets it too)."""
        if self._held:
            return True
        waiting = False
        try:
            while not stopping.is_set():
                if self._queue.held or self._queue.try_lock():
                    self._held = self._lock.try_lock()
                    if self._held:
                        return True
                if not waiting:
                    waiting = True
                    self._log_wait()
                wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), self._retry_s)
            return False
        finally:
            self._queue.unlock()

    def _log_wait(self) -> None:
        now = time.monotonic()
        if self._logged_at is None or now - self._logged_at >= LOG_EVERY_S:
            self._logged_at = now
            log.info(
                "GPU %s is in use by another process on this host (%s); waiting for it",
                self.gpu,
                self.path,
            )

    def awaited(self) -> bool:
        """Whether another process waits for this GPU (it holds the `.queue` file while it
        does): the holder then releases between jobs instead of keeping the GPU for the next."""
        if self._queue.held:
            return False
        if not self._queue.try_lock():
            return True
        self._queue.unlock()
        return False

    def release(self) -> None:
        """Release the lock now; the pipeline must be idle. A release already handed to the
        pipeline thread stays there."""
        with self._mutex:
            if not self._deferred:
                self._unlock()

    def release_when_idle(self) -> None:
        """Release once the pipeline thread has finished what it runs now (it may still be in a
        step of a job whose session is gone)."""
        with self._mutex:
            if not self._held or self._deferred:
                return
            self._deferred = True
        self._pipeline.submit(self._release_deferred)

    def _release_deferred(self) -> None:
        with self._mutex:
            self._deferred = False
            self._unlock()

    def close(self) -> None:
        """Release and close the files, unless the pipeline thread still has the release."""
        with self._mutex:
            if not self._deferred:
                self._unlock()
                self._lock.close()
                self._queue.close()

    def _unlock(self) -> None:
        if self._held:
            self._lock.unlock()
            self._held = False


class _LockFile:
    """One lock file, kept open between uses (a flock is then one syscall). Before each try it
    is reopened if the path no longer names the file held open (a temp cleaner removed it)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._inode = 0
        self.held = False

    def try_lock(self) -> bool:
        """An exclusive flock without waiting; False when another open file holds it."""
        try:
            fd = self._fd if os.stat(self.path).st_ino == self._inode else None
        except FileNotFoundError:
            fd = None
        if fd is None:
            fd = self._reopen()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        self.held = True
        return True

    def unlock(self) -> None:
        if self.held and self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        self.held = False

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.held = False

    def _reopen(self) -> int:
        self.close()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        self._inode = os.fstat(self._fd).st_ino
        return self._fd
