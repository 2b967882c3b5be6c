"""Lock files that keep two runs off the same model directory or scores output.

A lock lives next to what it guards: ``DIR/../.DIR.lock`` for a model directory (never inside
it, so fit-clusters' emptiness check and clearing never see it) and ``.SCORES.lock`` beside a
scores file. It is held with ``flock``, so the kernel releases it the moment its holder exits,
even on SIGKILL: a lock left by a dead process is never "held", and the next run takes it over
(logging who left it). Exclusive holders write their pid, host, start time and command into the
file, which the messages of waiting runs quote.

Writers (fit-clusters, meta-train, the scores output) take exclusive locks; readers of a model
directory (daily-score, backtest) take shared ones, so many scoring runs may read one model
while meta-train may not rewrite it under them. A run waits at most ``timeout`` seconds
(``--lock-timeout``; 0 = do not wait) and then stops with a message naming the holder.

After a clean run no lock file is left. Locks are per open file, not re-entrant: a process must
not take the same lock twice. Use a local filesystem (flock over NFS is not reliable).

Also here: :func:`crash_point`, the hook the crash-safety tests use to SIGKILL a run at a named
moment (``MAML_ANOMALY_CRASH_AT=<name>``); a no-op otherwise.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import signal
import socket
import sys
import time
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from maml_anomaly.errors import MamlAnomalyError

log = logging.getLogger(__name__)

CRASH_ENV = "MAML_ANOMALY_CRASH_AT"
CRASH_SIGNAL_ENV = "MAML_ANOMALY_CRASH_SIGNAL"
_POLL_S = (0.05, 0.5)  # first and longest sleep between tries while waiting


class LockBusyError(MamlAnomalyError):
    """Another run holds the lock and it was not released within the timeout."""


@dataclass(frozen=True)
class LockInfo:
    """Who holds (or, in a stale file, held) a lock."""

    pid: int
    host: str
    started_at: str  # ISO 8601, UTC
    command: str

    @classmethod
    def current(cls, command: str) -> LockInfo:
        return cls(
            pid=os.getpid(),
            host=socket.gethostname(),
            started_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            command=command,
        )

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host} ({self.command or 'maml-anomaly'}, started {self.started_at})"


def lock_path(target: str | Path) -> Path:
    """The lock file guarding ``target`` (a model directory or an output file): a hidden sibling."""
    target = Path(target).absolute()
    return target.parent / f".{target.name}.lock"


def read_holder(path: str | Path) -> LockInfo | None:
    """The holder recorded in a lock file, or None when it is empty, missing or unreadable."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return LockInfo(int(data["pid"]), str(data["host"]), str(data["started_at"]), str(data.get("command", "")))
    except (OSError, ValueError, KeyError, TypeError):
        return None


class FileLock:
    """An flock-based lock on ``lock_path(target)``; use as a context manager.

    shared: many shared holders may coexist; an exclusive holder excludes everyone.
    timeout: seconds to wait for the lock (0 = try once).
    what: how messages name the target ("model directory", "output").
    optional: when the lock file cannot be created (a read-only or foreign folder), go on
        without the lock and log a warning instead of failing; for readers, since a folder
        nobody can write into cannot be rewritten under them either.
    """

    def __init__(
        self,
        target: str | Path,
        *,
        shared: bool = False,
        timeout: float = 0.0,
        what: str = "output",
        command: str = "",
        optional: bool = False,
    ) -> None:
        if timeout < 0:
            raise ValueError("timeout must be >= 0")
        self.target = Path(target)
        self.path = lock_path(target)
        self.shared = shared
        self.timeout = timeout
        self.what = what
        self.command = command
        self.optional = optional
        self._fd: int | None = None

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        if self._fd is not None:
            raise RuntimeError(f"{self.path} is already held by this FileLock")
        deadline = time.monotonic() + self.timeout
        sleep, announced = _POLL_S[0], False
        while True:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = self._try_once()
            except OSError as exc:
                if self.optional:
                    log.warning(
                        "cannot lock the %s %s (%s); reading it without a lock",
                        self.what,
                        self.target,
                        exc.strerror or exc,
                    )
                    return
                raise MamlAnomalyError(
                    f"could not open the lock file {self.path} for the {self.what} {self.target} "
                    f"({exc.strerror or exc}). Check that {self.path.parent} is a writable folder, "
                    f"or choose another path."
                ) from None
            if fd is not None:
                self._fd = fd
                self._claim()
                return
            if time.monotonic() >= deadline:
                raise LockBusyError(self._busy_message())
            if not announced:
                log.warning("%s; waiting up to %.0f s for it (--lock-timeout)", self._held_by(), self.timeout)
                announced = True
            time.sleep(min(sleep, max(0.0, deadline - time.monotonic())))
            sleep = min(2 * sleep, _POLL_S[1])

    def release(self) -> None:
        """Release; the file is removed when no one else holds it (no lock file after a clean run)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if not self.shared or _try_flock(fd, fcntl.LOCK_EX):
                # Exclusive now: nobody else holds it. Unlink while holding it; a waiter that
                # opened the old file notices the unlink (inode check) and retries.
                if _same_file(fd, self.path):
                    self.path.unlink(missing_ok=True)
        finally:
            os.close(fd)  # closing releases the flock

    # -- internals --------------------------------------------------------------------------

    def _try_once(self) -> int | None:
        """An fd holding the lock, or None when someone else holds it."""
        mask = os.umask(0)
        os.umask(mask)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666 & ~mask)
        try:
            if not _try_flock(fd, fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX):
                os.close(fd)
                return None
            if not _same_file(fd, self.path):  # released and unlinked between open and flock
                os.close(fd)
                return self._try_once()
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _claim(self) -> None:
        """Record ourselves (exclusive) and report a stale holder left by a killed run."""
        assert self._fd is not None
        stale = read_holder(self.path)
        if stale is not None and stale.pid != os.getpid():
            log.warning(
                "took over the lock on %s %s left by %s, which is no longer running",
                self.what,
                self.target,
                stale.describe(),
            )
        if self.shared:
            if stale is not None:  # only possible when its exclusive holder died
                os.ftruncate(self._fd, 0)
            return
        text = json.dumps(asdict(LockInfo.current(self.command))) + "\n"
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, text.encode("utf-8"), 0)
        os.fsync(self._fd)

    def _held_by(self) -> str:
        holder = read_holder(self.path)
        who = holder.describe() if holder else "another maml-anomaly run reading it (daily-score or backtest)"
        return f"the {self.what} {self.target} is in use by {who} (lock file {self.path})"

    def _busy_message(self) -> str:
        waited = f"after waiting {self.timeout:g} s" if self.timeout > 0 else "and --lock-timeout is 0"
        return (
            f"{self._held_by()}, {waited}. Two runs must not write the same {self.what} at once: "
            "wait for that run to finish, or pass --lock-timeout SECONDS to wait for it. A lock "
            "left by a killed run is taken over automatically, so never delete the lock file by hand "
            "while a run may be alive."
        )


def _try_flock(fd: int, kind: int) -> bool:
    try:
        fcntl.flock(fd, kind | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (own.st_dev, own.st_ino) == (st.st_dev, st.st_ino)


@contextmanager
def command_locks(
    *,
    model_dir: str | Path | None = None,
    model_shared: bool = False,
    output: str | Path | None = None,
    timeout: float = 0.0,
    command: str = "",
) -> Iterator[None]:
    """Hold the locks of one command: the model directory first, then the output (a fixed order)."""
    command = command or " ".join(Path(a).name if i == 0 else a for i, a in enumerate(sys.argv[:2]))
    with ExitStack() as stack:
        deadline = time.monotonic() + timeout
        if model_dir is not None:
            stack.enter_context(
                FileLock(
                    model_dir,
                    shared=model_shared,
                    timeout=timeout,
                    what="model directory",
                    command=command,
                    optional=model_shared,  # a read-only model directory can still be scored
                )
            )
        if output is not None:
            left = max(0.0, deadline - time.monotonic()) if timeout > 0 else 0.0
            stack.enter_context(FileLock(output, timeout=left, what="output", command=command))
        crash_point("locked")
        yield


def crash_point(name: str) -> None:
    """Test hook: SIGKILL this process here when the environment names this point.

    The crash-safety tests set ``MAML_ANOMALY_CRASH_AT`` to kill a run at an exact moment of
    its write path, with no dependence on timing (``MAML_ANOMALY_CRASH_SIGNAL``, e.g. TERM or INT,
    sends that signal instead). Unset (always, in production) it does nothing.
    """
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.Signals["SIG" + os.environ.get(CRASH_SIGNAL_ENV, "KILL")])


__all__ = [
    "CRASH_ENV",
    "LockBusyError",
    "LockInfo",
    "FileLock",
    "lock_path",
    "read_holder",
    "command_locks",
    "crash_point",
]
