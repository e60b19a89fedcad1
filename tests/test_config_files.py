"""Config and task files are read with a bound on every dimension: one line for a file that
is too big, not text, a YAML bomb, self-referential, or gives a key twice."""

import re
import time

import pytest

from apet_ray.config_files import MAX_BYTES, read_mapping
from apet_ray.errors import UserError

BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, c in zip("abcdefgh", "bcdefghi"))


@pytest.mark.parametrize("name, content, message", [
    ("bomb.yaml", BOMB, "expands to more than"),  # ~440 bytes, 9^9 values once expanded
    ("loop.yaml", "a: &x [1, *x]\n", "expands to more than"),  # a list that holds itself
    ("twice.yaml", "lr: 1e-3\nmax_steps: 5\nlr: 1e-2\n", "key 'lr' is given twice (line 3)"),
    ("twice.json", '{"lr": 0.001, "lr": 0.01}', "key 'lr' is given twice"),
    ("nul.yaml", "lr: 1e-3\x00\n", "holds NUL bytes"),
    ("list.yaml", "- a\n- b\n", "a config file is a mapping of option: value pairs, not a list"),
    ("broken.yaml", "lr: [1, 2\n", "not valid YAML"),
    ("deep.json", "[" * 100_000 + "]" * 100_000, "not valid JSON"),
])
def test_a_bad_file_is_refused_in_one_line_at_once(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    started = time.perf_counter()
    with pytest.raises(UserError, match=re.escape(message)) as info:
        read_mapping(path, "config file")
    assert time.perf_counter() - started < 10 and "\n" not in str(info.value)


def test_size_and_encoding_are_bounded(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("a: " + "x" * (MAX_BYTES + 1))
    with pytest.raises(UserError, match="is not a config file"):
        read_mapping(big, "config file")
    utf16 = tmp_path / "utf16.yaml"
    utf16.write_bytes("lr: 1e-3\n".encode("utf-16"))
    with pytest.raises(UserError, match="UTF-8 text|NUL bytes"):
        read_mapping(utf16, "config file")


def test_a_plain_file_with_anchors_reads(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("base: &b [sst2, rte]\ntasks: *b\nmax_steps: 5\n")
    assert read_mapping(path, "config file") == {"base": ["sst2", "rte"], "tasks": ["sst2", "rte"], "max_steps": 5}
    with pytest.raises(UserError, match="not found"):
        read_mapping(tmp_path / "missing.yaml", "config file")
