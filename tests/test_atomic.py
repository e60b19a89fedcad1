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


HOLD = """
import sys, time
from apet_ray.atomic import owning
with owning(sys.argv[1], sys.argv[2]):
    print("held", flush=True)
    time.sleep(float(sys.argv[3]))
"""


def test_a_second_study_is_refused_while_the_first_holds_the_folder(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path), "first", "60"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match="in use by first") as info:
            with owning(tmp_path, "second"):
                pass
        assert "\n" not in str(info.value)
    finally:
        holder.kill()  # dies holding it: the kernel lets go, no stale lock to take over
        holder.wait()
    with owning(tmp_path, "second"):
        with owning(tmp_path, "second-part"):  # the same process may run studies in turn
            pass
        third = subprocess.run([sys.executable, "-c", HOLD, str(tmp_path), "third", "0"], capture_output=True, text=True)
        assert third.returncode != 0 and "in use by second" in third.stderr  # still held by the outer block
    assert subprocess.run([sys.executable, "-c", HOLD, str(tmp_path), "third", "0"], capture_output=True).returncode == 0


def test_of_processes_racing_for_a_free_folder_exactly_one_wins(tmp_path):
    racers = [subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path), f"racer{i}", "3"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True) for i in range(4)]
    outcomes = [r.communicate(timeout=60) for r in racers]
    assert sum(out.strip() == "held" for out, _ in outcomes) == 1
    assert sum("in use by racer" in err for _, err in outcomes) == 3


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_written_files_and_folders_take_the_umasks_permissions(tmp_path, mask, mode):
    import stat

    before = os.umask(mask)
    try:
        write_text(tmp_path / "table.csv", "a,b\n")
        src = tmp_path / "src"
        src.mkdir()
        copy_folder(src, tmp_path / "ckpt")
    finally:
        os.umask(before)
    assert stat.S_IMODE((tmp_path / "table.csv").stat().st_mode) == mode
    assert stat.S_IMODE((tmp_path / "ckpt").stat().st_mode) == mode | 0o111 & ~mask


def test_resume_takes_the_newest_complete_checkpoint(tmp_path):
    from apet_ray.commands.train import _checkpoints

    import torch
    from safetensors.torch import save_file

    # step-15: cut off before its state.json; step-20: its optimizer file torn (a header that lies)
    for step, state, torn in ((5, True, False), (10, True, False), (15, False, False), (20, True, True)):
        folder = tmp_path / f"step-{step}"
        folder.mkdir()
        for name in ("deltas", "optimizer"):
            save_file({"x": torch.zeros(64)}, str(folder / f"{name}.safetensors"))
        if torn:
            data = (folder / "optimizer.safetensors").read_bytes()
            (folder / "optimizer.safetensors").write_bytes(data[: len(data) // 2])
        if state:
            (folder / "state.json").write_text("{}")
    (tmp_path / ".step-30.abc.tmp").mkdir()  # a copy that never got renamed into place
    assert [p.name for p in _checkpoints(tmp_path)] == ["step-5", "step-10"]
