"""Threshold search without training: a known score curve over the count grid."""

import math

import pytest

from apet_ray.search import SearchState, ThresholdSearcher, log_grid


def curve(count: int) -> float:
    """Rises from chance (0.5) to 0.9 around 10^3: a typical Fig. 7 shape."""
    return 0.5 + 0.4 / (1 + math.exp(-(math.log10(count) - 3) * 4))


def dense_answer(grid, random_guess, margin, ft, tol):
    low = next((c for c in grid if curve(c) > random_guess + margin), None)
    high = next((c for c in grid if curve(c) >= ft - tol), None)
    return low, high


def drive(grid, ft=0.9, tol=0.02, random_guess=0.5, margin=0.05, concurrent=2):
    state = SearchState.new(grid, random_guess, margin, ft, tol)
    searcher = ThresholdSearcher(state, make_config=lambda count: {"count": count})
    running: dict[str, int] = {}
    trained = []
    n = 0
    while True:
        while len(running) < concurrent:
            n += 1
            suggestion = searcher.suggest(f"t{n}")
            if suggestion is None or suggestion == ThresholdSearcher.FINISHED:
                break
            running[f"t{n}"] = suggestion["trial"]["count"]
        if not running:
            break
        tid, count = next(iter(running.items()))
        del running[tid]
        trained.append(count)
        searcher.on_trial_complete(tid, {"score": curve(count)})
    return state, trained


def test_log_grid():
    grid = log_grid(10, 100_000, 4)
    assert grid[0] == 10 and grid[-1] == 100_000 and len(grid) == 17
    assert all(b > a for a, b in zip(grid, grid[1:]))


@pytest.mark.parametrize("per_decade", [2, 4, 8])
def test_bisection_finds_the_dense_grid_thresholds_with_few_trials(per_decade):
    grid = log_grid(10, 10**6, per_decade)
    state, trained = drive(grid)
    assert (state.threshold(state.low), state.threshold(state.high)) == dense_answer(grid, 0.5, 0.05, 0.9, 0.02)
    assert len(set(trained)) == len(trained)  # no count trained twice
    assert len(trained) <= 2 * math.ceil(math.log2(len(grid) + 1))
    assert len(trained) / len(grid) <= 0.5 if per_decade >= 4 else True


def test_never_reaching_ft_gives_no_high_threshold():
    grid = log_grid(10, 10**5, 4)
    state, _ = drive(grid, ft=0.99, tol=0.0)
    assert state.threshold(state.high) is None and state.threshold(state.low) is not None


def test_known_scores_are_reused_on_resume():
    grid = log_grid(10, 10**5, 4)
    first, trained = drive(grid)
    state = SearchState.new(grid, 0.5, 0.05, 0.9, 0.02)
    for i, score in first.scores.items():
        state.record(i, score)
    searcher = ThresholdSearcher(state, make_config=lambda c: {"count": c})
    assert searcher.suggest("x") == ThresholdSearcher.FINISHED
