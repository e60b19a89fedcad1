import json

import pytest

from apet_ray.cli import main
from support import shared_or_skip


def params(capsys, *argv):
    code = main(["params", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_json_has_the_counts(capsys):
    code, out, _ = params(capsys, "--model", "tiny-t5", "--method", "lora", "--json")
    data = json.loads(out)
    assert code == 0
    assert data["trainable_params"] == 4 * 2 * 8 * (32 + 32)
    assert data["ratio"] == pytest.approx(data["trainable_params"] / data["total_params"])


@pytest.mark.parametrize("argv,message", [
    (["--method", "apet", "--budget", "1e12"], "larger than"),
    (["--method", "nope"], "unknown method"),
    (["--method", "apet"], "--budget N or --match"),
    (["--method", "lora", "--budget", "10"], "only apply to --method apet"),
    (["--model", "./no/such/folder", "--method", "lora"], "does not exist"),
])
def test_bad_requests_exit_non_zero_with_one_line(capsys, argv, message):
    code, out, err = params(capsys, "--model", "tiny-bert", *argv) if "--model" not in argv else params(capsys, *argv)
    assert code != 0 and message in err and len(err.strip().splitlines()) == 1


# ---- acceptance figures on the paper's configs (skipped where ../shared is absent) ----
@pytest.mark.parametrize("method,count", [("lora", 589824), ("adapter", 1807488), ("prompt", 76800)])
def test_t5_v1_1_base_counts(capsys, method, count):
    cfg = shared_or_skip("configs", "t5-v1_1-base")
    code, out, _ = params(capsys, "--model", str(cfg), "--method", method, "--json")
    assert code == 0 and json.loads(out)["trainable_params"] == count


@pytest.mark.parametrize("op", ["add-weight", "concat", "plugin"])
@pytest.mark.parametrize("dist", ["adjacent", "discrete"])
def test_xxl_apet_matches_lora_and_hits_8000(capsys, op, dist):
    cfg = str(shared_or_skip("configs", "t5-v1_1-xxl"))
    lora = json.loads(params(capsys, "--model", cfg, "--method", "lora", "--json")[1])["trainable_params"]
    for flag, value, expected in (("--match", "lora", lora), ("--budget", "8000", 8000)):
        code, out, _ = params(capsys, "--model", cfg, "--method", "apet", "--op", op, "--distribution", dist, flag, value, "--json")
        assert code == 0 and json.loads(out)["trainable_params"] == expected


# Table 2's BitFit ratios (% of the backbone). T5-v1.1-small is the exception: the release
# records 121,216 trainable values for it (0.16 %), which no reading of its code reproduces;
# what it trains (every linear's bias, the LM head's over the tokenizer's 32,100 rows, the two
# relative-position tables and one new table per decoder cross-attention) is 114,916.
TABLE_2_BITFIT = {
    "bert-small-uncased-L4-H512": (0.05, 14_848), "bert-base-uncased": (0.06, 65_280),
    "bert-large-uncased": (0.05, 173_056), "t5-v1_1-small": (0.15, 114_916),
    "t5-v1_1-base": (0.11, 264_804), "t5-v1_1-xxl": (0.02, 2_444_644),
}


@pytest.mark.parametrize("config", sorted(TABLE_2_BITFIT))
def test_bitfit_counts_as_table_2(capsys, config):
    ratio, count = TABLE_2_BITFIT[config]
    code, out, _ = params(capsys, "--model", str(shared_or_skip("configs", config)), "--method", "bitfit", "--json")
    data = json.loads(out)
    assert code == 0 and data["trainable_params"] == count
    assert round(100 * data["ratio"], 2) == ratio


@pytest.mark.parametrize("config,total", [("t5-v1_1-small", 76_961_152), ("t5-v1_1-base", 247_577_856),
                                          ("t5-v1_1-xxl", 11_135_332_352), ("t5-small", 60_506_624)])
def test_t5_totals_count_the_head_the_checkpoint_has(capsys, config, total):
    # v1.1 has its own LM head (77.0M / 247.6M / 11.14B as released); T5 v1 ties it
    code, out, _ = params(capsys, "--model", str(shared_or_skip("configs", config)), "--method", "lora", "--json")
    assert code == 0 and json.loads(out)["total_params"] == total
