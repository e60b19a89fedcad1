"""Whole files or none, and one study per results folder."""

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from apet_ray.atomic import LOCK, copy_folder, owning, replacing, write_text
from apet_ray.errors import OutputError, UserError


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path):
    target = tmp_path / "study.json"
    write_text(target, "old")
    with pytest.raises(OutputError) as info:
        with replacing(target) as tmp:
            tmp.write_text("half")
            raise OSError(28, "No space left on device")  # ENOSPC in the middle of a write
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["study.json"]
    # one line naming the target (not the temp file) and the errno
    assert str(info.value) == f"cannot write {target}: No space left on device (ENOSPC)"


# ---- a disk that refuses (issue 27, item 8): one line, the path and the errno, nothing half-written


def _refuse(code):
    def refuse(*args, **kwargs):
        raise OSError(code, os.strerror(code), str(args[0]) if args else None)
    return refuse


@pytest.mark.parametrize("code, name", [(errno.ENOSPC, "ENOSPC"), (errno.EROFS, "EROFS"), (errno.EDQUOT, "EDQUOT")])
def test_every_writer_turns_a_refusing_disk_into_one_output_error(tmp_path, monkeypatch, code, name):
    from apet_ray.results import write_trial
    from test_results import curve, trial

    write_trial(tmp_path, "t1", trial("t1"), [curve(10)])
    before = {p: p.read_bytes() for p in tmp_path.rglob("*.parquet")}
    monkeypatch.setattr(os, "fsync", _refuse(code))  # the data never reaches the disk
    with pytest.raises(OutputError, match=rf"cannot write .*curves/t1.parquet: .* \({name}\)$") as info:
        write_trial(tmp_path, "t1", trial("t1", final_score=0.9), [curve(10), curve(20)])
    assert info.value.exit_code == 1 and "\n" not in str(info.value)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*.parquet")} == before  # the old rows, whole
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".") and p.name.endswith(".tmp")]
    monkeypatch.setattr(os, "mkdir", _refuse(code))  # a table folder that cannot be made
    with pytest.raises(OutputError, match=rf"cannot write .*new/curves: .* \({name}\)$"):
        write_trial(tmp_path / "new", "t2", trial("t2"), [curve(10)])


def test_a_folder_copy_that_fails_leaves_the_old_copy_in_place(tmp_path, monkeypatch):
    src, dst = tmp_path / "src", tmp_path / "step-5"
    src.mkdir()
    (src / "state.json").write_text("new")
    dst.mkdir()
    (dst / "state.json").write_text("old")
    real = os.replace
    calls = []

    def replace(a, b):  # the old copy goes aside; then the disk refuses the new one's rename
        calls.append((Path(a).name, Path(b).name))
        if Path(a).name.startswith(".step-5.") and not Path(a).name.startswith(".step-5.old") and b == dst:
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(a))
        return real(a, b)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OutputError, match=r"cannot write .*step-5: Input/output error \(EIO\)"):
        copy_folder(src, dst)
    assert calls[0][1].startswith(".step-5.old")  # moved aside first, never deleted before the new one is in
    assert (dst / "state.json").read_text() == "old"  # put back
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src", "step-5"]
    monkeypatch.setattr(os, "replace", real)
    monkeypatch.setattr(os, "fsync", _refuse(errno.ENOSPC))  # the copy's files cannot be made durable
    with pytest.raises(OutputError, match=r"\(ENOSPC\)"):
        copy_folder(src, dst)
    assert (dst / "state.json").read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["src", "step-5"]


def test_save_deltas_and_copy_folder_fsync_before_the_rename(tmp_path, monkeypatch):
    from apet_ray.delta import DeltaSpec, attach, save_deltas
    from support import tiny_classifier

    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))),
                                                 real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", str(a))), real_replace(a, b))[1])
    model = tiny_classifier()
    attach(model, DeltaSpec.pet("bitfit"))
    save_deltas(model, tmp_path / "deltas.safetensors")
    renamed = next(i for i, e in enumerate(events) if e[0] == "replace")
    assert ("fsync", events[renamed][1]) in events[:renamed]  # the temp file's bytes, before its rename
    events.clear()
    copy_folder(tmp_path, tmp_path.parent / f"{tmp_path.name}-copy")
    renamed = next(i for i, e in enumerate(events) if e[0] == "replace")
    assert any(e[0] == "fsync" and e[1].endswith("deltas.safetensors") for e in events[:renamed])


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
