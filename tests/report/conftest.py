"""Fixtures of the report tests; the row builders live in report_synth.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from report_synth import build_study


@pytest.fixture(scope="session")
def study_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic study on two BERT sizes, two seeds and one task in which every finding holds."""
    return build_study(tmp_path_factory.mktemp("study") / "results", tasks=("sst2",))
