"""Encoding: a huge text field costs what its kept tokens cost, and real texts are untouched."""

from apet_ray.data import CHARS_PER_TOKEN, encode
from apet_ray.models import load_tokenizer
from apet_ray.tasks import Example, get_task


class LongestSeen:
    """The real tokenizer, noting the longest string it was handed."""

    def __init__(self, tokenizer):
        self.tokenizer, self.longest = tokenizer, 0

    def __call__(self, texts, *args, **kwargs):
        self.longest = max([self.longest, *(len(t) for t in texts)])
        return self.tokenizer(texts, *args, **kwargs)


def test_a_huge_field_is_cut_before_the_tokenizer_reads_it_and_short_texts_keep_their_tokens():
    task, tokenizer = get_task("sst2"), load_tokenizer("tiny-bert")
    normal = "a fine , moving film that never once loses its nerve " * 3
    huge = "word " * 4_000_000  # 20 MB in one field: it took ~22 s and +2.9 GB to tokenize whole
    seen = LongestSeen(tokenizer)
    enc = encode(task, [Example(inputs=(normal,), label=1), Example(inputs=(huge,), label=0)], seen, "bert",
                 max_input_len=32)
    assert seen.longest == 32 * CHARS_PER_TOKEN
    assert enc.input_ids[0] == tokenizer(normal, truncation=True, max_length=32)["input_ids"]
    assert enc.input_ids[1] == tokenizer(huge[:10_000], truncation=True, max_length=32)["input_ids"]
