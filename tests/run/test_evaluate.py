"""predict runs batches in length order and answers in the data's order."""

import torch

from apet_ray.data import encode
from apet_ray.models import build_model, load_tokenizer
from apet_ray.run.evaluate import predict
from apet_ray.tasks import Example, get_task

WORDS = "a fine film with a dull plot and some moments of real warmth that linger".split()


def examples(n=11):
    # lengths out of order, so length order is not the data's order
    return [Example(inputs=(" ".join(WORDS[: 1 + (7 * i) % len(WORDS)]),), label=i % 2) for i in range(n)]


def test_batched_predictions_are_each_examples_own_in_the_data_order():
    task = get_task("sst2")
    model, _ = build_model("tiny-bert", num_labels=2, seed=3)
    tokenizer = load_tokenizer("tiny-bert")
    data = encode(task, examples(), tokenizer, "bert", 64)
    one_by_one = predict(model, task, data, "bert", tokenizer, 1, torch.device("cpu"))
    batched = predict(model, task, data, "bert", tokenizer, 4, torch.device("cpu"))
    logits = [model(**{k: torch.tensor([v]) for k, v in (("input_ids", data.input_ids[i]),
                                                          ("attention_mask", [1] * len(data.input_ids[i])))})["logits"]
              for i in range(len(data))]
    assert batched == one_by_one == [int(x.argmax()) for x in logits]
    assert len(set(batched)) == 2  # both classes appear: a shuffled order would show


def test_generation_predictions_keep_the_data_order():
    task = get_task("sst2")
    model, _ = build_model("tiny-llama", seed=3)
    tokenizer = load_tokenizer("tiny-llama")
    data = encode(task, examples(7), tokenizer, "causal", 64)
    assert predict(model, task, data, "causal", tokenizer, 3, torch.device("cpu")) == \
        predict(model, task, data, "causal", tokenizer, 1, torch.device("cpu"))
