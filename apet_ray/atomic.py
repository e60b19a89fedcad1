"""Files that are never seen half-written, and a results folder that one study owns at a time.

Everything the project writes goes through ``replacing``: the content goes to a hidden temp
file beside the target, is fsynced, and ``os.replace`` puts it in place, so a crash, a full
disk or Ctrl-C leaves the old file or the new one -- never a torn one. Readers skip the
temp files (they start with "." and end in ".tmp"). What lands has the permissions the
user's umask gives a new file (temp files are created 0600), so results on shared storage
stay readable to collaborators.

A disk that refuses (full, read-only, no permission) surfaces as one ``OutputError`` naming
the target -- not the temp file -- and the errno, after the temp file is gone: the old file
is intact and a resumed run writes it again.
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

from apet_ray.errors import OutputError, UserError


@contextmanager
def refused_as_output_error(path: str | Path):
    """An OSError inside the block becomes an ``OutputError`` about ``path`` (one line: the
    path and the errno); other errors pass unchanged."""
    try:
        yield
    except OutputError:
        raise
    except shutil.Error as exc:  # copytree: a list of (src, dst, reason), one per file that failed
        failed = exc.args[0] if exc.args and isinstance(exc.args[0], list) and exc.args[0] else [(None, None, str(exc))]
        raise OutputError(path, OSError(None, str(failed[0][2]))) from exc
    except OSError as exc:
        raise OutputError(path, exc) from exc


def make_folder(path: str | Path) -> Path:
    """``mkdir -p`` whose refusal (read-only, full, no permission) is one ``OutputError``."""
    path = Path(path)
    with refused_as_output_error(path):
        path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def replacing(path: str | Path):
    """A temp path to write; on success it replaces ``path`` whole, on an error it is removed.
    An OSError on the way (the caller's write included) is an ``OutputError`` about ``path``."""
    path = Path(path)
    with refused_as_output_error(path):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
    try:
        with refused_as_output_error(path):
            yield Path(tmp)
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o666 & ~umask())
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
    """``dst`` becomes a copy of ``src``: built beside it under a temp name, then renamed in;
    an old ``dst`` is moved aside first and deleted only once the new one is in place."""
    dst = Path(dst)
    with refused_as_output_error(dst):
        tmp = Path(tempfile.mkdtemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp"))
    old = dst.with_name(f".{dst.name}.old-{os.getpid()}.tmp")
    try:
        with refused_as_output_error(dst):
            shutil.copytree(src, tmp, dirs_exist_ok=True)
            for file in sorted(p for p in tmp.rglob("*") if p.is_file()):
                with open(file, "rb") as fh:  # the files are on disk before the rename says they are
                    os.fsync(fh.fileno())
            fsync_dir(tmp)
            os.chmod(tmp, 0o777 & ~umask())
            if dst.exists():
                os.replace(dst, old)  # aside, not deleted: a crash from here on leaves it to put back
            os.replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not dst.exists():
            os.replace(old, dst)  # put the old copy back
        raise
    fsync_dir(dst.parent)
    shutil.rmtree(old, ignore_errors=True)


def umask() -> int:
    """The process's umask, read without changing it (``os.umask`` sets it to read it, which
    would race with other threads' files)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    current = os.umask(0o022)  # no /proc (macOS): the set-and-restore fallback
    os.umask(current)
    return current


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
_HELD: dict[str, list] = {}  # lock path -> [open file, depth]: this process's locks, re-entrant


@contextmanager
def owning(folder: str | Path, study: str):
    """Hold ``folder`` for ``study`` while the block runs, with an OS lock (``flock``) on its
    lock file: a second study or train run pointed at it is refused in one line, and a lock
    whose process died is free again by itself (the kernel drops it), so two processes can
    never both take over a stale one. The same process may enter again (a script that runs
    several studies in turn). The file stays; its text only names the holder for messages."""
    import fcntl

    lock = Path(folder) / LOCK
    key = str(lock.resolve())
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield
        finally:
            _HELD[key][1] -= 1
        return
    fh = open(lock, "a+")
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        owner = _read_lock(lock)
        fh.close()
        raise UserError(f"{folder} is in use by {owner.get('study', 'another run')} (pid {owner.get('pid', '?')} on "
                        f"{owner.get('host', '?')} since {owner.get('since', '?')}): wait for it to end, or use "
                        "another folder") from None
    fh.seek(0)
    fh.truncate()
    json.dump({"pid": os.getpid(), "host": socket.gethostname(), "study": study,
               "since": time.strftime("%Y-%m-%d %H:%M:%S")}, fh)
    fh.flush()
    _HELD[key] = [fh, 1]
    try:
        yield
    finally:
        del _HELD[key]
        fh.close()  # releases the lock


def _read_lock(lock: Path) -> dict:
    try:
        return json.loads(lock.read_text())
    except (OSError, ValueError):
        return {}  # torn or unreadable: its holder is unknown
