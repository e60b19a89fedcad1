"""The report: the paper's table, figures and findings, from a results folder alone.

    summary = make_report("results/", "report/")

writes ``report.md`` (the index), ``table.{md,csv,tex}``, ``thresholds.csv``, the figures
that the data supports (PNG and SVG) and ``findings.md``. Files that can't be read are
listed by name in the index; everything else is still reported.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from apet_ray.atomic import make_folder, write_text
from apet_ray.errors import OutputError, UserError
from apet_ray.report.data import SCORE_COLUMNS, prepare
from apet_ray.report.findings import Finding, judge
from apet_ray.report.findings import to_markdown as findings_markdown
from apet_ray.report.tables import write_tables
from apet_ray.report.thresholds import HIGH_TOL, LOW_MARGIN, threshold_table
from apet_ray.results import count_files, read_results

log = logging.getLogger(__name__)

__all__ = ["ReportSummary", "make_report"]


@dataclass
class ReportSummary:
    """What ``make_report`` wrote and concluded."""

    out_dir: Path
    index: Path
    tables: list[Path]
    figures: dict[str, list[Path]]
    skipped: dict[str, str]  # figure name -> why it was not drawn
    findings: list[Finding]
    problems: list[str]  # unreadable or missing result files, by name
    notes: list[str] = field(default_factory=list)
    n_trials: int = 0

    def lines(self) -> list[str]:
        """What was written and concluded, one line each, for a console."""
        out = [f"report: {self.index}  ({self.n_trials} trials)",
               f"tables: {', '.join(str(p) for p in self.tables)}"]
        out += [f"figure {name}: {', '.join(str(p) for p in paths)}" for name, paths in self.figures.items()]
        out += [f"figure {name}: not drawn ({why})" for name, why in self.skipped.items()]
        out += [f"problem: {problem}" for problem in self.problems]
        out += [f"finding {f.number}: {f.verdict} — {f.claim}" for f in self.findings]
        return out + [f"findings: {self.out_dir / 'findings.md'}"]


def make_report(
    results_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    score: str = "final",
    figures: Iterable[str] | None = None,
    margin: float = LOW_MARGIN,
    tol: float = HIGH_TOL,
) -> ReportSummary:
    """Build the report of ``results_dir`` into ``out_dir``.

    ``score`` picks each trial's "final" or "best" score; ``figures`` limits which figures
    are drawn (names as in ``FIGURES``; default all); ``margin`` and ``tol`` set the low and
    high thresholds (E4 passes its own).
    """
    # matplotlib loads only when figures are drawn: tables and findings don't need it
    from apet_ray.report.figures import FIGURES
    from apet_ray.report.plotting import Skip

    if score not in SCORE_COLUMNS:
        raise UserError(f"score must be one of {', '.join(SCORE_COLUMNS)}, not {score!r}")
    wanted = list(FIGURES) if figures is None else list(figures)
    unknown = sorted(set(wanted) - set(FIGURES))
    if unknown:
        raise UserError(f"unknown figure(s) {', '.join(unknown)}; known: {', '.join(FIGURES)}")
    root = Path(results_dir)
    if not root.is_dir():
        raise UserError(f"results folder {str(root)!r} does not exist")
    if count_files(root) == 0:
        raise UserError(f"no results in {str(root)!r} (expected trials/*.parquet, curves/*.parquet)")
    results, problems = read_results(root)
    for problem in problems:
        log.info("results problem: %s", problem)  # the CLI and report.md list them
    out = make_folder(Path(out_dir))

    data = prepare(results, score, margin, tol)
    _, table_paths = write_tables(data, out)
    thresholds = out / "thresholds.csv"
    write_text(thresholds, threshold_table(data.trials, data.margin, data.tol).to_csv(index=False))
    table_paths.append(thresholds)

    drawn: dict[str, list[Path]] = {}
    skipped: dict[str, str] = {}
    for name in wanted:
        try:
            drawn[name] = FIGURES[name](data, out)
        except Skip as why:
            skipped[name] = str(why)
            log.info("skipped %s: %s", name, why)
        except OutputError:  # the disk refused: the whole report stops, in one line
            raise
        except Exception as exc:  # a figure bug must not cost the table, findings and problem list
            skipped[name] = f"failed: {type(exc).__name__}: {exc}"
            log.exception("figure %s failed", name)

    findings = judge(data)
    findings_path = out / "findings.md"
    write_text(findings_path, findings_markdown(findings))

    summary = ReportSummary(
        out_dir=out,
        index=out / "report.md",
        tables=table_paths,
        figures=drawn,
        skipped=skipped,
        findings=findings,
        problems=problems,
        notes=data.notes,
        n_trials=len(results.trials),
    )
    write_text(summary.index, _index(summary, root, data.score_column, results.files))
    return summary


def _index(summary: ReportSummary, root: Path, score_column: str, files: dict[str, int]) -> str:
    lines = [
        "# apet-ray report",
        "",
        f"Results: `{root}` — {summary.n_trials} trial(s); files read: "
        + ", ".join(f"{table} {n}" for table, n in files.items())
        + f". Scores are `{score_column}`, in %.",
        "",
        "## Problems",
        "",
    ]
    lines += [f"- {p}" for p in summary.problems] or ["None: every result file was read."]
    if summary.notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in summary.notes]
    lines += ["", "## Table", ""]
    lines += [f"- [{p.name}]({p.name})" for p in summary.tables]
    lines += ["", "## Figures", ""]
    for name, paths in summary.figures.items():
        png = next(p for p in paths if p.suffix == ".png")
        links = " · ".join(f"[{p.suffix[1:].upper()}]({p.name})" for p in paths)
        lines += [f"### {name}", "", links, "", f"![{name}]({png.name})", ""]
    if summary.skipped:
        lines += ["### Not drawn", ""] + [f"- {name}: {why}" for name, why in summary.skipped.items()]
    lines += ["", "## Findings", "", "Details and rules: [findings.md](findings.md)", ""]
    lines += [f"- Finding {f.number}: **{f.verdict}** — {f.claim}" for f in summary.findings]
    return "\n".join(lines) + "\n"
