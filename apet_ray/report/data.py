"""Turn the raw results tables into what the report needs: labels, kinds, one score.

Everything downstream works on plain string keys (nulls become ""), because pandas drops
rows whose group key is null unless told otherwise, and a silently dropped APET trial
would bias every comparison.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from apet_ray.delta.architectures import Kind
from apet_ray.delta.methods import display_label, order_of, pet_methods
from apet_ray.results import Results
from apet_ray.tasks import TASKS
from apet_ray.thresholds import HIGH_TOL, LEARN_MARGIN, LOW_MARGIN, baseline, learned

SCORE_COLUMNS = {"final": "final_score", "best": "best_score"}
METRIC_LABELS = {"accuracy": "accuracy", "f1": "F1", "rougeL": "ROUGE-L"}
TASK_TYPE_ORDER = {"SA": 0, "NLI": 1, "PI": 2, "QA": 3, "SUM": 4}
KIND_LABELS = {Kind.BERT: "BERT", Kind.T5: "T5", Kind.CAUSAL: "decoder-only"}


def _text(value: object) -> str:
    """A string cell, with null/NaN as ""."""
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        return ""
    return str(value)


def method_label(method: object, op: object = "", distribution: object = "", match: object = "") -> str:
    """Human label of a method from table cells (nulls as ""), e.g. "APET-Discrete (add, =LoRA)"."""
    return display_label(*(_text(v) for v in (method, op, distribution, match)))


def kind_label(kind: object, model: object) -> str:
    """"BERT", "T5", "decoder-only", or the model itself when the row predates the ``family``
    column (which holds the kind): sizes are compared within a kind, as in the paper, and an
    unknown kind is compared with nothing."""
    kind = _text(kind)
    return KIND_LABELS.get(kind, kind) if kind else f"? {_text(model)}"


def registered_task_type(task: str) -> str:
    """A built-in task's type in the paper's spelling (SA, NLI...); "" for any other."""
    return TASKS[task].type.upper() if task in TASKS else ""


def human(n: float) -> str:
    """1234567 -> "1.23M"; compact parameter counts for labels and findings."""
    for value, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= value:
            return f"{n / value:.3g}{suffix}"
    return f"{n:.3g}"


def metric_label(metric: str) -> str:
    return f"{METRIC_LABELS.get(metric, metric or 'score')} (%)"


@dataclass
class ReportData:
    """Usable rows plus what was set aside, with report-ready columns added.

    ``trials`` gains ``label``, ``family`` (the kind's label), ``score`` (the chosen score column), ``baseline``
    (``thresholds.baseline``: chance or the majority class) and ``learned``;
    ``curves`` gains the trial's ``match``, ``label``, ``total_params``, ``metric``;
    ``transfer`` gains ``label`` and ``relative_value`` (given or computed).
    """

    trials: pd.DataFrame
    curves: pd.DataFrame
    transfer: pd.DataFrame
    score_column: str
    task_types: dict[str, str]
    notes: list[str] = field(default_factory=list)
    margin: float = LOW_MARGIN  # the low threshold: above random guessing by this much
    tol: float = HIGH_TOL  # the high threshold: within this of FT

    def learned_only(self) -> "ReportData":
        """The same data without the trials that did not learn: what findings are judged on."""
        keep = self.trials[self.trials["learned"]]
        ids = set(keep["trial_id"])
        return ReportData(keep, self.curves[self.curves["trial_id"].isin(ids)],
                          self.transfer[self.transfer["trial_id"].isin(ids)], self.score_column, self.task_types,
                          self.notes, self.margin, self.tol)


_KEY_TEXT = ("study", "model", "family", "task", "task_type", "method", "op", "distribution", "match", "metric",
             "status")


def _clean_text(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    for col in _KEY_TEXT + ("source_task", "target_task", "trial_id"):
        if col in df.columns:
            df[col] = df[col].map(_text).astype(object)
    return df


def prepare(results: Results, score: str = "final", margin: float = LOW_MARGIN, tol: float = HIGH_TOL) -> ReportData:
    """Select usable trials, attach labels, and derive what every table and figure shares."""
    score_column = SCORE_COLUMNS[score]
    notes: list[str] = []
    trials = _clean_text(results.trials)
    errors = int((trials["status"] == "error").sum())
    if errors:
        notes.append(f"{errors} trial(s) with status 'error' left out of every table and figure.")
    trials = trials[trials["status"] != "error"].copy()
    search = trials[trials["status"] == "search"]
    if len(search):
        notes.append(f"{len(search)} learning-rate search trial(s) (--tune-lr) left out of every table, figure and "
                     f"finding: their cost was {int(search['steps_run'].sum()):,} training steps, "
                     f"{float(search['wall_time_s'].fillna(0).sum()) / 60:.1f} min of runs.")
        trials = trials[trials["status"] != "search"].copy()
    stopped = trials[trials["status"] == "early_stopped"]
    if len(stopped):
        # ASHA (or a search) stopped them: their score is where they were, not where they would end
        listed = "; ".join(
            f"{method_label(r.method, r.op, r.distribution, r.match)} on {r.model} / {r.task} seed {r.seed}: "
            f"{100 * r.final_score:.1f} % at step {r.steps_run} of {r.max_steps}"
            for r in stopped.sort_values(["model", "task", "trial_id"]).itertuples())
        notes.append(f"{len(stopped)} trial(s) stopped early (by ASHA, or by a threshold search that no longer needed "
                     f"their count) left out of every table, figure and finding: {listed}.")
    trials = trials[trials["status"] != "early_stopped"].copy()
    decided = int((trials["status"] == "decided").sum())
    if decided:
        notes.append(f"{decided} threshold-search probe(s) stopped once their score passed the threshold they probed: "
                     "their score is the one at that point, a lower bound of where they would end.")
    trials["score"] = trials[score_column].astype(float)
    unscored = int(trials["score"].isna().sum())
    if unscored:
        notes.append(f"{unscored} trial(s) without a {score_column} left out.")
    trials = trials[trials["score"].notna()].copy()
    trials["label"] = [
        method_label(*r) for r in trials[["method", "op", "distribution", "match"]].itertuples(index=False)
    ]
    trials["family"] = [kind_label(k, m) for k, m in zip(trials["family"], trials["model"])]
    trials["method_rank"] = trials["method"].map(order_of)
    trials["baseline"] = [baseline(r, m) for r, m in zip(trials["random_guess"].astype(float), trials["majority"].astype(float))]
    trials["learned"] = pd.Series([learned(sc, b) for sc, b in zip(trials["score"], trials["baseline"])],
                                  index=trials.index, dtype=bool)  # bool even when empty: it is used as a mask
    idle = trials[~trials["learned"]]
    if len(idle):
        listed = "; ".join(f"{lab} on {r.model} / {r.task} seed {r.seed}: {100 * r.score:.1f} % (baseline {100 * r.baseline:.1f} %)"
                           for lab, r in zip(idle["label"], idle.itertuples()))
        notes.append(f"{len(idle)} trial(s) did not learn (score within {100 * LEARN_MARGIN:g} points of the larger of "
                     f"random guessing and the majority class): shown in the table and figures, left out of the "
                     f"findings: {listed}.")

    task_types = {t: registered_task_type(t) for t in _all_tasks(results)}
    task_types.update(dict(zip(trials["task"], trials["task_type"])))

    curves = _clean_text(results.curves)
    curves = curves[curves["trial_id"].isin(set(trials["trial_id"]))].copy()  # of the trials reported
    per_trial = trials.drop_duplicates("trial_id").set_index("trial_id")
    curves["match"] = curves["trial_id"].map(per_trial["match"]).fillna("")
    curves["total_params"] = curves["trial_id"].map(per_trial["total_params"])
    curves["metric"] = curves["trial_id"].map(per_trial["metric"]).fillna("")
    curves["label"] = [
        method_label(*r) for r in curves[["method", "op", "distribution", "match"]].itertuples(index=False)
    ]
    transfer = _prepare_transfer(_clean_text(results.transfer), trials, notes)
    return ReportData(trials, curves, transfer, score_column, task_types, notes, margin, tol)


def _all_tasks(results: Results) -> set[str]:
    tasks = {_text(t) for t in results.trials["task"]}
    tasks |= {_text(t) for t in results.transfer["source_task"]}
    tasks |= {_text(t) for t in results.transfer["target_task"]}
    return tasks - {""}


def _prepare_transfer(transfer: pd.DataFrame, trials: pd.DataFrame, notes: list[str]) -> pd.DataFrame:
    """Relative transfer = score / in-task score of the target task, on the same label set.

    Taken, in order, from: the row's ``relative``; ``score / in_task_score``; the target's
    self-transfer row (a delta trained on the target, scored through the unified labels on the
    same examples -- the diagonal of a transfer study) of the same model, method, op,
    distribution and seed; failing that, that trial's own score (its own label set, noted).
    """
    transfer = transfer.copy()
    transfer["label"] = [
        method_label(m, o, d) for m, o, d in transfer[["method", "op", "distribution"]].itertuples(index=False)
    ]
    rel = transfer["relative"].astype(float)
    given = transfer["in_task_score"].astype(float)
    from_given = transfer["score"] / given.where(given > 0)
    keys = ["model", "method", "op", "distribution", "seed"]
    own = transfer[transfer["source_task"] == transfer["target_task"]]
    unified = own.groupby(keys + ["target_task"])["score"].mean().rename("unified_in_task").reset_index()
    in_task = trials.groupby(keys + ["task"])["score"].mean().rename("trial_in_task").reset_index()
    joined = (transfer.merge(unified, how="left", on=keys + ["target_task"])
              .merge(in_task, how="left", left_on=keys + ["target_task"], right_on=keys + ["task"])
              .set_index(transfer.index))
    from_diagonal = joined["score"] / joined["unified_in_task"].where(joined["unified_in_task"] > 0)
    from_trials = joined["score"] / joined["trial_in_task"].where(joined["trial_in_task"] > 0)
    value = rel.fillna(from_given).fillna(from_diagonal)
    on_own_labels = int((value.isna() & from_trials.notna()).sum())
    if on_own_labels:
        notes.append(f"{on_own_labels} transfer row(s) made relative to the target's in-task score on its own label "
                     "set (no self-transfer row to score it on the unified one).")
    transfer["relative_value"] = value.fillna(from_trials)
    missing = int(transfer["relative_value"].isna().sum())
    if missing:
        notes.append(f"{missing} transfer row(s) without a known in-task score left out of relative transfer.")
    return transfer


def seed_stats(df: pd.DataFrame, keys: list[str], value: str = "score") -> pd.DataFrame:
    """Mean, sample std (ddof=1) and number of seeds of ``value`` per ``keys``.

    Trials repeating a seed (the same config in two studies) are averaged per seed first,
    so each seed counts once.
    """
    if df.empty:
        return pd.DataFrame(columns=keys + ["mean", "std", "n_seeds"])
    per_seed = df.groupby(keys + ["seed"], dropna=False, sort=False)[value].mean()
    stats = per_seed.groupby(level=list(range(len(keys))), dropna=False, sort=False).agg(["mean", "std", "count"])
    return stats.rename(columns={"count": "n_seeds"}).reset_index()


def pet_default(trials: pd.DataFrame) -> pd.DataFrame:
    """PET and FT trials at their paper configuration, one budget per (task, model, method).

    A trial that resized a PET method for a budget sweep records ``requested_params``;
    those are set aside here. If a method still has several budgets on one model and task,
    the budget with the most trials is kept (ties: the smaller budget).
    """
    pet = trials[trials["method"].isin(pet_methods())]
    pet = pet[pet["requested_params"].isna()]
    if pet.empty:
        return pet
    counts = pet.groupby(["task", "model", "method", "delta_params"]).size().rename("n").reset_index()
    counts = counts.sort_values(["n", "delta_params"], ascending=[False, True])
    keep = counts.drop_duplicates(["task", "model", "method"])[["task", "model", "method", "delta_params"]]
    return pet.merge(keep, on=["task", "model", "method", "delta_params"])


def structure_frame(data: ReportData) -> pd.DataFrame:
    """Trials of the structure ablation: each PET method and the APET trials matching its count.

    Columns added: ``group`` (the matched PET method) and ``structure`` ("PET",
    "APET-Adjacent (add)", ...). Shared by Fig. 5 and finding 2.
    """
    trials = data.trials
    apet = trials[(trials["method"] == "apet") & (trials["match"] != "")].copy()
    if apet.empty:
        return apet.assign(group=[], structure=[])
    apet["group"] = apet["match"]
    apet["structure"] = [f"APET-{d.capitalize() or '?'} ({o or '?'})" for d, o in zip(apet["distribution"], apet["op"])]
    pet = pet_default(trials)
    pet = pet[pet["method"].isin(set(apet["match"]))].copy()
    pet["group"] = pet["method"]
    pet["structure"] = "PET"
    return pd.concat([pet, apet], ignore_index=True)


def transfer_matrix(rows: pd.DataFrame) -> pd.DataFrame:
    """Source x target mean relative transfer (each seed counted once)."""
    per_seed = rows.groupby(["source_task", "target_task", "seed"])["relative_value"].mean()
    return per_seed.groupby(level=[0, 1]).mean().unstack("target_task")
