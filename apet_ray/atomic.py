"""Files that are never seen half-written, and a results folder that one study owns at a time.

Everything the project writes goes through ``replacing``: the content goes to a hidden temp
file beside the target, is fsynced, and ``os.replace`` puts it in place, so a crash, a full
disk or Ctrl-C leaves the old file or the new one -- never a torn one. Readers skip the
temp files (they start with "." and end in ".tmp").
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from apet_ray.errors import UserError


@contextmanager
def replacing(path: str | Path):
    """A temp path to write; on success it replaces ``path`` whole, on an error it is removed."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_text(path: str | Path, text: str) -> None:
    with replacing(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def copy_file(src: str | Path, dst: str | Path) -> None:
    with replacing(dst) as tmp:
        shutil.copyfile(src, tmp)


def copy_folder(src: str | Path, dst: str | Path) -> None:
    """``dst`` becomes a copy of ``src``: built beside it under a temp name, then renamed."""
    dst = Path(dst)
    tmp = Path(tempfile.mkdtemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp"))
    try:
        shutil.copytree(src, tmp, dirs_exist_ok=True)
        if dst.exists():
            shutil.rmtree(dst)
        os.replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(dst.parent)


def fsync_dir(folder: Path) -> None:
    # makes a rename durable; not possible on every platform, and harmless to skip
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---- one study per results folder -------------------------------------------------------------

LOCK = ".apet-ray.lock"


@contextmanager
def owning(folder: str | Path, study: str):
    """Hold ``folder`` for ``study`` while the block runs: a second study pointed at it is
    refused in one line; a lock left by a process that is gone (this host) is taken over.
    The same process may enter again (a script that runs several studies in turn)."""
    lock = Path(folder) / LOCK
    mine = {"pid": os.getpid(), "host": socket.gethostname(), "study": study, "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    held_before = False
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _read_lock(lock)
            if owner.get("pid") == os.getpid() and owner.get("host") == mine["host"]:
                held_before = True
                break
            if owner.get("host") == mine["host"] and not _alive(owner.get("pid")):
                lock.unlink(missing_ok=True)  # its owner died without letting go
                continue
            raise UserError(f"{folder} is in use by study {owner.get('study', '?')} (pid {owner.get('pid', '?')} on "
                            f"{owner.get('host', '?')} since {owner.get('since', '?')}): wait for it to end, or use "
                            f"another --results (remove {lock} only if that process is gone)") from None
        with os.fdopen(fd, "w") as fh:
            json.dump(mine, fh)
        break
    try:
        yield
    finally:
        if not held_before:
            lock.unlink(missing_ok=True)


def _read_lock(lock: Path) -> dict:
    try:
        return json.loads(lock.read_text())
    except (OSError, ValueError):
        return {}  # torn or unreadable: treated as held by an unknown owner


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
