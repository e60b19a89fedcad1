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


@pytest.mark.parametrize("op", ["add", "concat", "plugin"])
@pytest.mark.parametrize("dist", ["adjacent", "discrete"])
def test_xxl_apet_matches_lora_and_hits_8000(capsys, op, dist):
    cfg = str(shared_or_skip("configs", "t5-v1_1-xxl"))
    lora = json.loads(params(capsys, "--model", cfg, "--method", "lora", "--json")[1])["trainable_params"]
    for flag, value, expected in (("--match", "lora", lora), ("--budget", "8000", 8000)):
        code, out, _ = params(capsys, "--model", cfg, "--method", "apet", "--op", op, "--distribution", dist, flag, value, "--json")
        assert code == 0 and json.loads(out)["trainable_params"] == expected
