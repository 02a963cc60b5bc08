"""The demo's weight grid brackets the chosen value: extension by a factor at the edge the choice sits on."""

from __future__ import annotations

import math

import pytest

from stackalign.runner.demo import bracket_grid, bracketing_sentence, world_kind


def fake_sweep(peak: float | None, calls: list[list[float]]):
    """A sweep whose gold is a bump in log(v) around ``peak`` (None: flat), chosen like ``choose_value``:
    the argmax, ties to the larger value."""

    def gold(v: float) -> float:
        return 0.0 if peak is None else -((math.log(v) - math.log(peak)) ** 2)

    def sweep(grid: list[float]) -> dict:
        calls.append(list(grid))
        best = max(range(len(grid)), key=lambda i: (gold(grid[i]), i))
        per_value = {format(v, "g"): {"methods": {"ARGS": {"gold_reward": gold(v)}}} for v in grid}
        return {
            "chosen": grid[best],
            "weight_key": "w",
            "values": grid,
            "method": "ARGS",
            "criterion": "gold_reward",
            "per_value": per_value,
        }

    return sweep


def test_a_choice_at_the_low_edge_extends_the_grid_downwards_until_interior():
    calls: list[list[float]] = []
    res = bracket_grid(fake_sweep(0.05, calls), [0.25, 1.0, 4.0, 16.0])
    assert res["chosen"] == 0.0625
    b = res["bracketing"]
    assert b["added"] == [0.125, 0.0625, 0.03125]
    assert b["grid"] == [0.03125, 0.0625, 0.125, 0.25, 1.0, 4.0, 16.0]
    assert b["interior"] is True
    assert calls[0] == [0.25, 1.0, 4.0, 16.0] and len(calls) == 4
    assert "extended by 0.125, 0.0625, 0.03125" in bracketing_sentence(res)


def test_a_choice_at_the_high_edge_extends_upwards():
    calls: list[list[float]] = []
    res = bracket_grid(fake_sweep(50.0, calls), [0.25, 1.0, 4.0, 16.0])
    assert res["bracketing"]["added"] == [32.0, 64.0, 128.0]  # 64 is nearest to 50 in log(v)
    assert res["chosen"] == 64.0
    assert res["bracketing"]["grid"][0] == 0.25 and res["bracketing"]["interior"]


def test_an_interior_choice_runs_the_sweep_once():
    calls: list[list[float]] = []
    res = bracket_grid(fake_sweep(1.2, calls), [4.0, 0.25, 1.0, 16.0])
    assert calls == [[0.25, 1.0, 4.0, 16.0]]
    assert res["chosen"] == 1.0 and res["bracketing"]["added"] == []
    assert "no extension was needed" in bracketing_sentence(res)


def test_a_flat_curve_at_the_edge_stops_once_the_added_value_ties_and_says_plateau():
    calls: list[list[float]] = []
    res = bracket_grid(fake_sweep(None, calls), [1.0, 2.0])
    assert res["bracketing"]["added"] == [4.0]  # one extension shows the flat stretch continues
    assert res["bracketing"]["interior"] is False and res["bracketing"]["plateau"] is True
    assert "plateau" in bracketing_sentence(res)


def test_a_monotone_curve_stops_after_the_cap_and_says_it_is_not_bracketed():
    calls: list[list[float]] = []
    res = bracket_grid(fake_sweep(1e-6, calls), [1.0, 2.0], max_extensions=3)
    assert res["bracketing"]["added"] == [0.5, 0.25, 0.125]
    assert res["bracketing"]["interior"] is False and res["bracketing"]["plateau"] is False
    assert "not bracketed" in bracketing_sentence(res)


def test_a_single_value_grid_grows_both_ways():
    calls: list[list[float]] = []
    res = bracket_grid(fake_sweep(1.0, calls), [1.0])
    assert res["bracketing"]["added"] == [0.5, 2.0]
    assert res["chosen"] == 1.0 and res["bracketing"]["interior"]


def test_bad_grids_are_refused():
    with pytest.raises(ValueError, match="factor"):
        bracket_grid(fake_sweep(1.0, []), [1.0], factor=1.0)
    with pytest.raises(ValueError, match="values"):
        bracket_grid(fake_sweep(1.0, []), [])


def test_world_kind_reads_names_and_manifests(tmp_path):
    assert world_kind(None) == "default" and world_kind("smol") == "smol"
    (tmp_path / "manifest.json").write_text('{"kind": "smol"}')
    assert world_kind(str(tmp_path)) == "smol"
    (tmp_path / "manifest.json").write_text('{"format": 2}')
    assert world_kind(str(tmp_path)) == "default"


def test_each_world_kind_has_a_packaged_recipe_that_validates():
    from stackalign.runner.demo import DEMO_SETTINGS, demo_recipe_path
    from stackalign.runner.recipe import load_recipe

    for kind in DEMO_SETTINGS:
        recipe = load_recipe(demo_recipe_path(kind), [])
        assert recipe.world == kind
        assert "ARGS" in [m.name for m in recipe.methods]  # the method the protocol sweeps
