"""Paths a user hands over, checked where they enter and before anything starts.

One place says what is wrong with a path, so every flag and config key that takes one
refuses the same mistakes in the same words, in one line:

- an empty path (``--out ''`` would otherwise mean the current directory, ``--data-dir ''``
  the hub): ``path_arg`` is the argparse type of every path option, and the config files'
  values are parsed through it too;
- a symlink loop, a file where a folder goes, a folder that cannot be searched: ``check_input``
  (data, task, config and model paths) and ``output_folder`` (``--results``, ``--out``);
- an output folder apet-ray may not create or write (read-only disk, no permission):
  ``output_folder`` creates and deletes a hidden probe file in the folder (or in the
  nearest folder above it that exists), so what the kernel refuses is refused here, before
  Ray starts, and not half-way through a study.

A missing input is left to the reader that needs it (it says "not found" in its own words).
"""

from __future__ import annotations

import argparse
import errno
import os
import tempfile
from pathlib import Path

from apet_ray.errors import UserError, describe

EMPTY = "an empty path (leave the option out for its default)"


def path_arg(value: str) -> str:
    """The argparse ``type`` of path options: anything but an empty or blank string."""
    if not str(value).strip():
        raise argparse.ArgumentTypeError(f"{value!r} is {EMPTY}")
    return value


path_arg.__name__ = "path"  # argparse and the config files name the type in messages


def given(value: str | os.PathLike | None, what: str) -> None:
    """Refuse an empty path; None (not given) is fine."""
    if value is not None and not str(value).strip():
        raise UserError(f"{what} {str(value)!r}: {EMPTY}")


def _problem(path: Path, error: OSError, what: str, value) -> UserError:
    if error.errno == errno.ELOOP:
        why = "symlink loop"
    elif error.errno == errno.ENOTDIR:
        file = next((p for p in reversed(path.parents) if os.path.exists(p) and not os.path.isdir(p)), None)
        why = f"{file} is a file, not a folder" if file else "a file stands where a folder of the path goes"
        path = Path(value)  # the file is named already
    elif error.errno in (errno.EACCES, errno.EPERM):
        why = f"a folder on the way cannot be searched ({error.strerror})"
    else:
        why = describe(error)
    return UserError(f"{what} {value}: {why}" + (f" (at {path})" if str(path) != str(value) else ""))


def check_input(value: str | os.PathLike | None, what: str, folder: bool | None = None) -> None:
    """A path to read: not empty, no symlink loop, readable (a folder: listable) when it
    exists, and a folder or a file when ``folder`` says so. None passes; a missing path is
    left to its reader."""
    if value is None:
        return
    given(value, what)
    path = Path(os.path.abspath(Path(value).expanduser()))
    try:
        os.stat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise _problem(path, exc, what, value) from None
    is_dir = os.path.isdir(path)
    if folder is True and not is_dir:
        raise UserError(f"{what} {value} is a file, not a folder")
    if folder is False and is_dir:
        raise UserError(f"{what} {value} is a folder, not a file")
    if not os.access(path, os.R_OK | (os.X_OK if is_dir else 0)):
        raise UserError(f"{what} {value}: not readable (Permission denied)")


def output_folder(value: str | os.PathLike, what: str, probe: bool = True) -> Path:
    """The absolute, resolved folder an output goes to, refused in one line when it cannot be
    one: empty, a symlink loop, a file (or a file on the way), a dangling symlink, or -- with
    ``probe`` -- a folder where a file cannot be created (read-only, no permission). Nothing
    is created; the probe file is removed at once."""
    given(value, what)
    path = Path(os.path.abspath(Path(value).expanduser()))
    existing = path
    while True:
        try:
            os.stat(existing)
            break
        except FileNotFoundError:
            if os.path.lexists(existing):
                raise UserError(f"{what} {value}: {existing} is a symlink to a missing target "
                                f"({os.readlink(existing)})") from None
            existing = existing.parent
        except OSError as exc:
            raise _problem(existing, exc, what, value) from None
    if not os.path.isdir(existing):
        if existing == path:
            raise UserError(f"{what} {value} is a file, not a folder")
        raise UserError(f"{what} {value}: {existing} is a file, not a folder")
    if probe:
        _probe_writable(existing, what, value)
    return path.resolve()


def _probe_writable(folder: Path, what: str, value) -> None:
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".apet-ray-probe.", suffix=".tmp")
    except OSError as exc:
        where = "" if str(folder) == os.path.abspath(Path(value).expanduser()) else f" (cannot create it in {folder})"
        raise UserError(f"{what} {value}: not writable{where}: {describe(exc)}") from None
    os.close(fd)
    os.unlink(tmp)
