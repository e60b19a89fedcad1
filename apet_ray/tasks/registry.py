"""The 11 tasks of the paper, each described once.

A ``Task`` says where the data lives (hub dataset and split names, or local files for a
task the user brings), which columns hold the inputs and the answer, how T5 spells the
labels, and the lengths and metric the paper uses for it (paper.md §4-5). Everything that
reads data, formats it for T5 or scores predictions takes a ``Task``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from apet_ray.errors import UserError

TASK_TYPES = ("sa", "nli", "pi", "qa", "sum")
CLASSIFICATION_TYPES = ("sa", "nli", "pi")
METRICS = ("accuracy", "f1", "rougeL")

# paper.md §5: accuracy for classification, token F1 for NQ-Open, ROUGE-L for summaries.
METRIC_OF_TYPE = {"sa": "accuracy", "nli": "accuracy", "pi": "accuracy", "qa": "f1", "sum": "rougeL"}

# paper.md §4: 128 tokens for single-sentence tasks (SA), 256 for the rest.
MAX_INPUT_LEN_OF_TYPE = {"sa": 128, "nli": 256, "pi": 256, "qa": 256, "sum": 256}

# paper.md §4 gives 1 for classification, 128 for SAMSum and 64 for Multi-News. It is silent
# on NQ-Open; 32 tokens covers practically every gold answer (they are short spans:
# names, dates, numbers). Custom summarisation tasks get SAMSum's 128.
MAX_GEN_LEN_OF_TYPE = {"sa": 1, "nli": 1, "pi": 1, "qa": 32, "sum": 128}


@dataclass(frozen=True, slots=True)
class Example:
    """One example, whatever the task.

    ``inputs`` holds the text columns in the task's order. Classification examples carry
    ``label`` (an id into ``Task.label_words``) and no targets; generation examples carry
    ``targets``: every gold answer for QA, the one reference summary for SUM.
    """

    inputs: tuple[str, ...]
    label: int | None = None
    targets: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Task:
    """Everything the rest of the package needs to know about one task.

    Fields are tuples (not lists or dicts) so a ``Task`` is hashable and can key caches.
    """

    name: str
    type: str  # one of TASK_TYPES
    text_columns: tuple[str, ...]  # hub column names of the 1 (or 2) text inputs
    label_column: str | None = None  # classification: integer ids in hub order
    target_column: str | None = None  # generation: answer list (QA) or summary (SUM)
    label_words: tuple[str, ...] = ()  # what T5 emits, index = label id
    # label id -> unified id for zero-shot transfer (paper.md §7, E5): 0 = negative /
    # not-entailment / not-equivalent, 1 = positive / entailment / equivalent, None = no
    # binary meaning (MNLI neutral). Empty for generation tasks.
    unified_label: tuple[int | None, ...] = ()
    hub_path: str | None = None
    hub_name: str | None = None  # the dataset's config, e.g. "sst2" inside nyu-mll/glue
    hub_revision: str | None = None
    train_split: str = "train"
    eval_split: str = "validation"
    max_input_len: int = 0  # 0: the default for the type
    max_gen_len: int = 0  # 0: the default for the type
    metric: str = ""  # "": the metric of the type
    # A task the user brings (see ``apet_ray.tasks.custom``) reads local files instead of
    # the hub. Without ``eval_file`` the train file is split: ``eval_fraction`` of its rows,
    # chosen by a shuffle seeded with ``split_seed``, become the eval split.
    train_file: str | None = None
    eval_file: str | None = None
    eval_fraction: float = 0.1
    split_seed: int = 0
    # For custom tasks the label column holds arbitrary values (1..5 stars, "spam"); these
    # are their string forms in id order. Empty for hub tasks, whose files hold ids.
    label_values: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.type not in TASK_TYPES:
            raise UserError(f"task {self.name!r}: unknown type {self.type!r} (known: {', '.join(TASK_TYPES)})")
        if not self.text_columns:
            raise UserError(f"task {self.name!r}: needs at least one text column")
        # frozen: defaults that depend on the type are filled in through object.__setattr__
        if not self.metric:
            object.__setattr__(self, "metric", METRIC_OF_TYPE[self.type])
        if not self.max_input_len:
            object.__setattr__(self, "max_input_len", MAX_INPUT_LEN_OF_TYPE[self.type])
        if not self.max_gen_len:
            object.__setattr__(self, "max_gen_len", MAX_GEN_LEN_OF_TYPE[self.type])
        if self.metric not in METRICS:
            raise UserError(f"task {self.name!r}: unknown metric {self.metric!r} (known: {', '.join(METRICS)})")
        if self.is_classification:
            if self.label_column is None or self.target_column is not None:
                raise UserError(f"task {self.name!r}: a {self.type} task needs a label column and no target column")
            if len(self.label_words) < 2:
                raise UserError(f"task {self.name!r}: needs at least two label words")
            lowered = [w.strip().lower() for w in self.label_words]
            if len(set(lowered)) != len(lowered) or "" in lowered:
                raise UserError(f"task {self.name!r}: label words must be distinct and non-empty: {self.label_words}")
            if not self.unified_label:
                object.__setattr__(self, "unified_label", (None,) * len(self.label_words))
            if len(self.unified_label) != len(self.label_words):
                raise UserError(f"task {self.name!r}: unified_label needs one entry per label word")
        else:
            if self.target_column is None or self.label_column is not None:
                raise UserError(f"task {self.name!r}: a {self.type} task needs a target column and no label column")

    @property
    def is_classification(self) -> bool:
        return self.type in CLASSIFICATION_TYPES

    @property
    def num_labels(self) -> int:
        return len(self.label_words)

    @property
    def random_guess(self) -> float:
        """Chance score: 1/#labels for classification, 0 for generation (paper.md §5)."""
        return 1.0 / self.num_labels if self.is_classification else 0.0

    @property
    def hub_id(self) -> str:
        """``path`` or ``path:config`` (plus ``@revision``), for tables and messages."""
        if self.hub_path is None:
            return ""
        text = self.hub_path + (f":{self.hub_name}" if self.hub_name else "")
        return text + (f"@{self.hub_revision}" if self.hub_revision else "")

    @property
    def is_custom(self) -> bool:
        return self.train_file is not None

    def unified_ids(self) -> tuple[int, ...]:
        """Label id -> id on the unified label set (E5; the release's ``label_mapping_type``
        "number"): the unified 0 / 1 where a label has one, then 2, 3... for the others (MNLI's
        neutral), so a model trained on it answers every task in one vocabulary."""
        extra = iter(range(2, 2 + self.unified_label.count(None)))
        return tuple(u if u is not None else next(extra) for u in self.unified_label)

    def unified_view(self) -> "Task":
        """This task with its labels on the unified set: label words "0", "1"(, "2"...), ids
        as ``unified_ids`` gives them. Its examples come from ``relabel_unified``."""
        n = len(self.label_words)
        if not self.is_classification or {0, 1} - set(self.unified_label):
            raise UserError(f"task {self.name!r} has no unified negative/positive labels to train on: "
                            "train it on its own labels (--labels task)")
        return replace(self, label_words=tuple(str(i) for i in range(n)), label_values=(),
                       unified_label=tuple(i if i in (0, 1) else None for i in range(n)))

    def relabel_unified(self, examples: list[Example]) -> list[Example]:
        ids = self.unified_ids()
        return [replace(e, label=ids[e.label]) for e in examples]

    def to_unified(self, label: int) -> int | None:
        """The unified id (0/1) of a label id, or None where it has no binary meaning."""
        if not self.is_classification:
            return None
        return self.unified_label[label]

    def describe(self) -> dict:
        """A JSON-friendly summary (``apet-ray tasks --json``)."""
        return {
            "name": self.name,
            "type": self.type,
            "metric": self.metric,
            "random_guess": self.random_guess,
            "max_input_len": self.max_input_len,
            "max_gen_len": self.max_gen_len,
            "hub_path": self.hub_path,
            "hub_name": self.hub_name,
            "hub_revision": self.hub_revision,
            "train_split": self.train_split,
            "eval_split": self.eval_split,
            "text_columns": list(self.text_columns),
            "label_column": self.label_column,
            "target_column": self.target_column,
            "label_words": list(self.label_words),
            "unified_label": list(self.unified_label),
        }


def _glue(name: str, type_: str, columns: tuple[str, ...], words: tuple[str, ...],
          unified: tuple[int | None, ...], eval_split: str = "validation") -> Task:
    # nyu-mll/glue is the parquet version of the old script-based "glue" dataset; the
    # script one no longer loads with datasets >= 4.
    return Task(name=name, type=type_, text_columns=columns, label_column="label",
                label_words=words, unified_label=unified, hub_path="nyu-mll/glue",
                hub_name=name, eval_split=eval_split)


_SENTIMENT = ("negative", "positive")
_NLI2 = ("entailment", "not_entailment")  # hub order: 0 = entailment

_ALL = (
    _glue("sst2", "sa", ("sentence",), _SENTIMENT, (0, 1)),
    # the hub imdb has no validation split; its test split is the eval split
    Task(name="imdb", type="sa", text_columns=("text",), label_column="label",
         label_words=_SENTIMENT, unified_label=(0, 1), hub_path="stanfordnlp/imdb",
         eval_split="test"),
    Task(name="rotten_tomatoes", type="sa", text_columns=("text",), label_column="label",
         label_words=_SENTIMENT, unified_label=(0, 1),
         hub_path="cornell-movie-review-data/rotten_tomatoes"),
    # contradiction is a not-entailment (0); neutral has no place on a binary scale
    _glue("mnli", "nli", ("premise", "hypothesis"), ("entailment", "neutral", "contradiction"),
          (1, None, 0), eval_split="validation_matched"),
    _glue("qnli", "nli", ("question", "sentence"), _NLI2, (1, 0)),
    _glue("rte", "nli", ("sentence1", "sentence2"), _NLI2, (1, 0)),
    _glue("mrpc", "pi", ("sentence1", "sentence2"), ("not_equivalent", "equivalent"), (0, 1)),
    _glue("qqp", "pi", ("question1", "question2"), ("not_duplicate", "duplicate"), (0, 1)),
    Task(name="nq_open", type="qa", text_columns=("question",), target_column="answer",
         hub_path="google-research-datasets/nq_open"),
    # Samsung/samsum (a loading script) is gone from the hub; knkarthick/samsum holds the
    # same splits and columns as plain files.
    Task(name="samsum", type="sum", text_columns=("dialogue",), target_column="summary",
         hub_path="knkarthick/samsum", max_gen_len=128),
    # alexfabbri/multi_news is script-based, which datasets >= 4 refuses; the hub's own
    # parquet conversion of it lives on the refs/convert/parquet branch.
    Task(name="multi_news", type="sum", text_columns=("document",), target_column="summary",
         hub_path="alexfabbri/multi_news", hub_revision="refs/convert/parquet", max_gen_len=64),
)

TASKS: dict[str, Task] = {task.name: task for task in _ALL}


def task_names() -> list[str]:
    """The built-in task names, in the paper's order (SA, NLI, PI, QA, SUM)."""
    return list(TASKS)


def get_task(name: str) -> Task:
    """The built-in task called ``name`` (case-insensitive; '-' is read as '_')."""
    key = name.strip().lower().replace("-", "_")
    try:
        return TASKS[key]
    except KeyError:
        raise UserError(f"unknown task {name!r} (known: {', '.join(TASKS)})") from None
