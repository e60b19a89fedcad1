"""The 11 tasks of the paper: registry, loading, T5 formatting and metrics.

    task = get_task("rte")
    train = load_examples(task, "train", data_dir="data", limit=1000, seed=0)
    source, target = to_text(task, train[0])       # "rte sentence1: ... sentence2: ...", "entailment"
    label = decode_generated(task, token_ids, tokenizer)  # id, or -1 for anything else
    score(task, predictions, eval_examples)        # accuracy / F1 / ROUGE-L on 0-1

A user's own file becomes a task with ``custom_task`` (see ``apet_ray.tasks.custom``), or
through a task file (``read_task_file``, see ``apet_ray.tasks.task_file``).
"""

from apet_ray.tasks.custom import custom_task, holdout_indices
from apet_ray.tasks.formatting import decode_generated, label_token_ids, to_text
from apet_ray.tasks.loading import DATA_SOURCES, frame_to_examples, load_examples, split_file, subset
from apet_ray.tasks.metrics import accuracy, mean_f1, normalize_answer, qa_f1, rouge_l, score, token_f1
from apet_ray.tasks.packaged import load_packaged_rotten_tomatoes, packaged_available, packaged_rotten_tomatoes_path
from apet_ray.tasks.registry import TASK_TYPES, TASKS, Example, Task, get_task, task_names
from apet_ray.tasks.task_file import is_task_file, read_task_file

__all__ = [
    "DATA_SOURCES", "TASKS", "TASK_TYPES", "Example", "Task",
    "accuracy", "custom_task", "decode_generated", "frame_to_examples", "get_task", "holdout_indices",
    "is_task_file", "read_task_file",
    "load_examples", "load_packaged_rotten_tomatoes", "mean_f1", "normalize_answer",
    "packaged_available", "packaged_rotten_tomatoes_path", "label_token_ids", "qa_f1", "rouge_l",
    "score", "split_file", "subset", "task_names", "to_text", "token_f1",
]
