"""Threshold search without training: a known score curve over the count grid."""

import math

import pytest

from apet_ray.study.bisection import DecidedProbes, SearchState, ThresholdSearcher, log_grid


def curve(count: int) -> float:
    """Rises from chance (0.5) to 0.9 around 10^3: a typical Fig. 7 shape."""
    return 0.5 + 0.4 / (1 + math.exp(-(math.log10(count) - 3) * 4))


def dense_answer(grid, random_guess, margin, ft, tol):
    low = next((c for c in grid if curve(c) > random_guess + margin), None)
    high = next((c for c in grid if curve(c) >= ft - tol), None)
    return low, high


def drive(grid, ft=0.9, tol=0.02, random_guess=0.5, margin=0.05, concurrent=2, searches=1):
    """Run ``searches`` identical searches on ``concurrent`` slots, every probe taking one time
    unit. Returns the first search's state, every count trained, and the wall time."""
    states = {f"s{i}": SearchState.new(grid, random_guess, margin, ft, tol) for i in range(searches)}
    searcher = ThresholdSearcher(states, make_config=lambda name, count: {"name": name, "count": count})
    running: dict[str, tuple[float, int]] = {}  # trial -> (finish time, count)
    trained = []
    n, now = 0, 0.0
    while True:
        while len(running) < concurrent:
            n += 1
            suggestion = searcher.suggest(f"t{n}")
            if suggestion is None or suggestion == ThresholdSearcher.FINISHED:
                break
            running[f"t{n}"] = (now + 1.0, suggestion["trial"]["count"])
        if not running:
            break
        tid = min(running, key=lambda t: running[t][0])
        now, count = running.pop(tid)
        trained.append(count)
        searcher.on_trial_complete(tid, {"score": curve(count)})
    return states["s0"], trained, now


def test_log_grid():
    grid = log_grid(10, 100_000, 4)
    assert grid[0] == 10 and grid[-1] == 100_000 and len(grid) == 17
    assert all(b > a for a, b in zip(grid, grid[1:]))


@pytest.mark.parametrize("per_decade", [2, 4, 8])
def test_bisection_finds_the_dense_grid_thresholds_with_few_trials(per_decade):
    grid = log_grid(10, 10**6, per_decade)
    state, trained, _ = drive(grid)
    assert (state.threshold(state.low), state.threshold(state.high)) == dense_answer(grid, 0.5, 0.05, 0.9, 0.02)
    assert len(set(trained)) == len(trained)  # no count trained twice
    assert len(trained) <= 2 * math.ceil(math.log2(len(grid) + 1))
    assert len(trained) / len(grid) <= 0.5 if per_decade >= 4 else True


def test_never_reaching_ft_gives_no_high_threshold():
    grid = log_grid(10, 10**5, 4)
    state, _, _ = drive(grid, ft=0.99, tol=0.0)
    assert state.threshold(state.high) is None and state.threshold(state.low) is not None


def test_known_scores_are_reused_on_resume():
    grid = log_grid(10, 10**5, 4)
    first, trained, _ = drive(grid)
    state = SearchState.new(grid, 0.5, 0.05, 0.9, 0.02)
    for i, score in first.scores.items():
        state.record(i, score)
    searcher = ThresholdSearcher({"s": state}, make_config=lambda name, c: {"count": c})
    assert searcher.suggest("x") == ThresholdSearcher.FINISHED


@pytest.mark.parametrize("concurrent", [1, 2, 4, 8])
def test_k_ary_search_finds_the_same_thresholds_in_fewer_rounds(concurrent):
    grid = log_grid(10, 10**6, 8)
    state, trained, wall = drive(grid, concurrent=concurrent)
    assert (state.threshold(state.low), state.threshold(state.high)) == dense_answer(grid, 0.5, 0.05, 0.9, 0.02)
    assert len(set(trained)) == len(trained)
    _, serial, serial_wall = drive(grid, concurrent=1)
    if concurrent >= 4:  # more probes, in less time
        assert wall <= serial_wall / 2 and len(trained) >= len(serial)


def test_all_searches_of_a_study_run_together():
    grid = log_grid(10, 10**5, 4)
    one, _, wall_alone = drive(grid, concurrent=2, searches=1)
    state, _, wall = drive(grid, concurrent=6, searches=3)
    assert (state.threshold(state.low), state.threshold(state.high)) == (one.threshold(one.low), one.threshold(one.high))
    assert wall == wall_alone  # three searches side by side, not one after another


def test_a_probe_is_stopped_once_decided_or_no_longer_needed():
    grid = log_grid(10, 10**5, 4)  # 17 counts
    state = SearchState.new(grid, 0.5, 0.05, 0.9, 0.02)
    searcher = ThresholdSearcher({"s": state}, make_config=lambda name, c: {"count": c}, score="best")
    stopper = DecidedProbes(searcher)
    first = searcher.suggest("a")["trial"]["count"]
    second = searcher.suggest("b")["trial"]["count"]
    assert first == grid[8] and second != first
    assert not stopper("a", {"score": 0.6, "best_score": 0.6})  # passes the low test, not yet the high one
    assert stopper("a", {"score": 0.89, "best_score": 0.89})  # within tol of FT: passes both tests it is open to
    searcher.on_trial_complete("a", {"score": 0.89, "best_score": 0.89})
    assert "a" in searcher.decided and state.high.hi == 8 and state.low.hi == 8
    if grid.index(second) > 8:  # probing above a count known to pass: nobody needs it now
        assert stopper("b", {"score": 0.5, "best_score": 0.5}) and "b" in searcher.abandoned
        searcher.on_trial_complete("b", {"score": 0.5, "best_score": 0.5})
        assert grid.index(second) not in state.scores


def test_under_the_final_score_a_passing_probe_trains_to_the_end():
    # measured on MiniLM at lr 1e-2: a probe passed the low test at step 40 and ended below it
    # at step 120; stopped as decided, the search's low threshold was 3,162 and the dense grid's 10,000
    grid = log_grid(10, 10**5, 4)
    state = SearchState.new(grid, 0.5, 0.05, 0.9, 0.02)
    searcher = ThresholdSearcher({"s": state}, make_config=lambda name, c: {"count": c})  # score="final"
    stopper = DecidedProbes(searcher)
    assert searcher.suggest("a")["trial"]["count"] == grid[8]
    assert not stopper("a", {"score": 0.95, "best_score": 0.95})  # passes both tests now
    searcher.on_trial_complete("a", {"score": 0.52, "best_score": 0.95})  # and fails both at the end
    assert "a" not in searcher.decided and state.scores[8] == 0.52
    assert state.low.lo == 9 and state.high.lo == 9  # both thresholds lie above count 8


def test_an_lr_ladder_scores_each_count_by_its_best_lr():
    # only lr 1e-2 learns: one shared lr of 1e-4 would find no threshold at all
    grid = log_grid(10, 10**5, 4)
    state = SearchState.new(grid, 0.5, 0.05, 0.9, 0.02)
    searcher = ThresholdSearcher({"s": state}, make_config=lambda name, c, lr: {"count": c, "lr": lr},
                                 lrs=(1e-4, 1e-3, 1e-2))
    running, n = {}, 0
    while True:
        while len(running) < 2:
            n += 1
            suggestion = searcher.suggest(f"t{n}")
            if suggestion is None or suggestion == ThresholdSearcher.FINISHED:
                break
            running[f"t{n}"] = suggestion["trial"]
        if not running:
            break
        tid, trial = next(iter(running.items()))
        del running[tid]
        searcher.on_trial_complete(tid, {"score": curve(trial["count"]) if trial["lr"] == 1e-2 else 0.5})
    assert (state.threshold(state.low), state.threshold(state.high)) == dense_answer(grid, 0.5, 0.05, 0.9, 0.02)
    assert set(searcher.best_lr.values()) == {1e-2}
    trained = searcher.probes["s"]
    assert all(trained.count(c) == 3 for c in set(trained))  # every probed count at each of the three lrs


def test_a_bracket_narrower_than_the_seeds_spread_is_settled_without_more_probes():
    # two seeds already know their high thresholds, 6 grid steps apart; a third seed's open
    # bracket of 2 steps cannot narrow that interval: it settles at its upper end, untrained
    grid = log_grid(10, 10**6, 4)  # 21 counts
    states = {f"s{i}": SearchState.new(grid, 0.5, 0.05, 0.9, 0.02) for i in range(3)}
    for name, high in (("s0", 8), ("s1", 14)):
        states[name].high.lo = states[name].high.hi = high
        states[name].low.lo = states[name].low.hi = 4
    states["s2"].high.lo, states["s2"].high.hi = 10, 12
    states["s2"].low.lo = states["s2"].low.hi = 4
    searcher = ThresholdSearcher(states, make_config=lambda name, c: {"count": c},
                                 groups={name: "one search" for name in states})
    assert searcher.suggest("t") == ThresholdSearcher.FINISHED
    assert states["s2"].threshold(states["s2"].high) == grid[12] and searcher.settled == {("s2", "high")}
    # without the group the bracket is bisected as before
    alone = {"s2": SearchState.new(grid, 0.5, 0.05, 0.9, 0.02)}
    alone["s2"].high.lo, alone["s2"].high.hi = 10, 12
    alone["s2"].low.lo = alone["s2"].low.hi = 4
    assert ThresholdSearcher(alone, make_config=lambda name, c: {"count": c}).suggest("t")["trial"]["count"] == grid[11]
