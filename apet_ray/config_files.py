"""Reading the small YAML / JSON files users hand apet-ray (study configs, task files) with a
bound on every dimension, so no file can make a check hang or eat memory before it is refused.

- at most ``MAX_BYTES`` on disk (a config is a page; anything larger is not one);
- text (UTF-8, no NUL bytes);
- YAML anchors are allowed, but the document *as expanded* may hold at most ``MAX_NODES``
  values: a 440-byte "billion laughs" is refused here, before any code joins or prints it;
- a key given twice in one mapping is refused (YAML would keep the last one silently).

Every refusal is one line naming the file and what is wrong.
"""

from __future__ import annotations

import json
from pathlib import Path

from apet_ray.errors import UserError
from apet_ray.paths import check_input

MAX_BYTES = 1_000_000
MAX_NODES = 100_000


def read_mapping(path: str | Path, what: str, expected: str = "a mapping of option: value pairs") -> dict:
    """The top-level mapping of ``path`` (YAML, or JSON for a ``.json`` file); ``what`` names
    the file's role in messages (e.g. "config file", "task file"), ``expected`` what it holds."""
    path = Path(path)
    check_input(path, what, folder=False)  # empty, a symlink loop, unreadable, a folder
    if not path.is_file():
        raise UserError(f"{what} {path} not found")
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise UserError(f"{path}: {size:,} bytes is not a {what} (at most {MAX_BYTES:,})")
        raw = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    if b"\x00" in raw:
        raise UserError(f"{path}: a {what} is text; this one holds NUL bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: a {what} is UTF-8 text (byte {exc.start} is not)") from None
    data = _json(text, path) if path.suffix.lower() == ".json" else _yaml(text, path)
    _bounded(data, path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: a {what} is {expected}, not a {type(data).__name__}")
    return data


def _json(text: str, path: Path):
    def no_duplicates(pairs):
        keys = [k for k, _ in pairs]
        twice = sorted({k for k in keys if keys.count(k) > 1})
        if twice:
            raise UserError(f"{path}: key {twice[0]!r} is given twice")
        return dict(pairs)

    try:
        return json.loads(text, object_pairs_hook=no_duplicates)
    except ValueError as exc:
        raise UserError(f"{path}: not valid JSON ({str(exc).splitlines()[0]})") from None
    except RecursionError:
        raise UserError(f"{path}: not valid JSON for a config (nested too deeply)") from None


def _yaml(text: str, path: Path):
    import yaml

    class Loader(yaml.SafeLoader):
        """SafeLoader that refuses a key given twice in one mapping."""

    def mapping(loader, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            if key in seen:
                raise UserError(f"{path}: key {key!r} is given twice (line {key_node.start_mark.line + 1})")
            seen.add(key)
        return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    try:
        return yaml.load(text, Loader=Loader)  # noqa: S506 -- a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    except RecursionError:
        raise UserError(f"{path}: nested too deeply to be a config") from None


def _bounded(data, path: Path) -> None:
    """Count the values of the document as expanded (an anchor counts at every use), stopping
    at ``MAX_NODES``: shared references make a small file a huge tree."""
    count, stack = 0, [data]
    while stack:
        item = stack.pop()
        count += 1
        if count > MAX_NODES:
            raise UserError(f"{path}: expands to more than {MAX_NODES:,} values (YAML anchors?): not a config")
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
