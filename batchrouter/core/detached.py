"""Background processes that outlive the process that needed them, one per lock file.

The ledger's owner (`core.control`) and the built-in provider simulator (`simulator.shared`) are both
started this way: a client takes an exclusive `flock` on the lock file without waiting; if it gets
it, it starts the process, which inherits the locked descriptor and holds it until it exits. From
the client's decision to the process's exit the lock stays held, so no second one starts; a client
that finds the lock taken knows one runs (or is starting) and waits for its discovery file.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

# Starts the real process in a new session, stdio on /dev/null, passing it the lock, then exits at once:
# so the process is nobody's child (no zombie in the caller) and outlives the caller.
_LAUNCHER = (
    "import subprocess, sys; fd = int(sys.argv[1]); subprocess.Popen(sys.argv[2:], stdin=subprocess.DEVNULL, "
    "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, pass_fds=(fd,))"
)


def try_lock(path: str | Path) -> int | None:
    """The descriptor of `path` locked exclusively by us, or None when another process holds the lock."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def locked(path: str | Path) -> bool:
    """Whether some process holds the lock on `path` (a probe: it never blocks)."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the probe's own lock
    return False


def start(command: Sequence[str], *, lock_fd: int) -> None:
    """Start `command` detached; it inherits `lock_fd`, still locked (the command says where it finds it)."""
    subprocess.run([sys.executable, "-c", _LAUNCHER, str(lock_fd), *command], check=False, timeout=60,
                   pass_fds=(lock_fd,), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)  # fmt: skip
