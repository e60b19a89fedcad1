"""The layer contract of docs/architecture.md is checked, not claimed: `lint-imports` (the
contract in pyproject.toml) passes, no two modules import each other in a loop, and a lower
layer importing a higher one breaks the contract."""

import shutil
import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]
LINT = [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"]


def lint(cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(LINT, cwd=cwd, capture_output=True, text=True, timeout=120, env={"PYTHONPATH": str(cwd),
                          "PATH": "/usr/bin:/bin"})


def test_the_layer_contract_holds():
    done = lint(ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "1 kept, 0 broken" in done.stdout


def test_no_module_imports_itself_through_others():
    graph = grimp.build_graph("apet_ray")
    cycles = []
    for module in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(module):
            chain = graph.find_shortest_chain(importer=imported, imported=module)
            if chain and not module.startswith(imported + ".") and not imported.startswith(module + "."):
                cycles.append(" -> ".join((module, *chain)))
    assert not cycles, "\n".join(cycles)


def test_a_lower_layer_importing_a_higher_one_breaks_the_contract(tmp_path):
    shutil.copytree(ROOT / "apet_ray", tmp_path / "apet_ray", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    masks = tmp_path / "apet_ray" / "delta" / "masks.py"
    masks.write_text(masks.read_text() + "\nfrom apet_ray.study import run_study  # noqa: a layer violation\n")
    done = lint(tmp_path)
    assert done.returncode != 0 and "apet_ray.delta.masks -> apet_ray.study" in done.stdout, done.stdout[-3000:]
