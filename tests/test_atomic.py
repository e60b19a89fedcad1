"""Whole files or none, and one study per results folder."""

import os
import subprocess
import sys

import pytest

from apet_ray.atomic import LOCK, copy_folder, owning, replacing, write_text
from apet_ray.errors import UserError


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path):
    target = tmp_path / "study.json"
    write_text(target, "old")
    with pytest.raises(OSError):
        with replacing(target) as tmp:
            tmp.write_text("half")
            raise OSError(28, "No space left on device")  # ENOSPC in the middle of a write
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["study.json"]


def test_a_folder_copy_appears_whole(tmp_path):
    src = tmp_path / "ckpt"
    src.mkdir()
    (src / "deltas.safetensors").write_bytes(b"x" * 10)
    (src / "state.json").write_text("{}")
    copy_folder(src, tmp_path / "step-5")
    copy_folder(src, tmp_path / "step-5")  # again: replaced, not merged or nested
    assert sorted(p.name for p in (tmp_path / "step-5").iterdir()) == ["deltas.safetensors", "state.json"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_second_study_is_refused_while_the_first_holds_the_folder(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / LOCK).write_text(f'{{"pid": {holder.pid}, "host": "{os.uname().nodename}", "study": "first", '
                                     f'"since": "now"}}')
        with pytest.raises(UserError, match="in use by study first") as info:
            with owning(tmp_path, "second"):
                pass
        assert "\n" not in str(info.value)
    finally:
        holder.kill()
        holder.wait()
    with owning(tmp_path, "second"):  # its owner is gone: a stale lock is taken over
        with owning(tmp_path, "second-part"):  # the same process may run studies in turn
            assert (tmp_path / LOCK).exists()
        assert (tmp_path / LOCK).exists()
    assert not (tmp_path / LOCK).exists()


def test_resume_takes_the_newest_complete_checkpoint(tmp_path):
    from apet_ray.commands.train import _checkpoints

    for step, complete in ((5, True), (10, True), (15, False)):  # step-15: cut off before its state.json
        folder = tmp_path / f"step-{step}"
        folder.mkdir()
        (folder / "deltas.safetensors").write_bytes(b"x")
        if complete:
            (folder / "state.json").write_text("{}")
    (tmp_path / ".step-20.abc.tmp").mkdir()  # a copy that never got renamed into place
    assert [p.name for p in _checkpoints(tmp_path)] == ["step-5", "step-10"]
