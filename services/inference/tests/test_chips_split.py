"""How labelled chips are split: whole groups (blocks or dates) to train, val and test, with
every class in every split where it lies in enough groups (pure; no data)."""

from __future__ import annotations

from collections import Counter

import pytest

from eostream.inference.chips import ChipRules, _split_of
from eostream.inference.errors import BadInputError

WATER, OTHER = 0, 1


def _blocks() -> dict[str, Counter[int]]:
    """A 4x4 grid of blocks; water (rare) in four of them, as a reservoir lies in a scene."""
    groups = {f"{r}:{c}": Counter({OTHER: 20 + r + c}) for r in range(4) for c in range(4)}
    for key, n in {"1:1": 10, "1:2": 6, "2:1": 12, "2:2": 3}.items():
        groups[key][WATER] = n
    return groups


def _per_split(groups: dict[str, Counter[int]], split: dict[str, str]) -> dict[str, Counter[int]]:
    out: dict[str, Counter[int]] = {"train": Counter(), "val": Counter(), "test": Counter()}
    for key, counts in groups.items():
        out[split[key]].update(counts)
    return out


@pytest.mark.parametrize("seed", [0, 1, 2, 42])
def test_a_rare_class_lands_in_every_split(seed: int) -> None:
    groups = _blocks()
    split = _split_of(groups, ChipRules(seed=seed), "block")
    assert set(split) == set(groups)
    per = _per_split(groups, split)
    assert all(per[s][WATER] > 0 for s in per), per  # validation sees water too
    chips = {s: sum(c.values()) for s, c in per.items()}
    total = sum(chips.values())
    assert chips["train"] > chips["val"] and chips["train"] > chips["test"]
    assert 0.45 <= chips["train"] / total <= 0.75, chips  # about the 60/20/20 fractions


def test_the_seed_draws_another_split() -> None:
    groups = _blocks()
    draws = {tuple(sorted(_split_of(groups, ChipRules(seed=s), "block").items())) for s in range(6)}
    assert len(draws) > 1
    assert _split_of(groups, ChipRules(seed=3), "block") == _split_of(
        groups, ChipRules(seed=3), "block"
    )


def test_a_class_in_fewer_than_three_groups_cannot_be_everywhere() -> None:
    groups = {k: Counter({OTHER: 5}) for k in ("a", "b", "c", "d", "e")}
    groups["a"][WATER] = 7
    split = _split_of(groups, ChipRules(), "date")
    assert set(split.values()) == {"train", "val", "test"}  # each split still gets a group


def test_three_groups_at_least() -> None:
    with pytest.raises(BadInputError, match="2 date"):
        _split_of({"a": Counter({0: 1}), "b": Counter({1: 1})}, ChipRules(), "date")


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_dates_of_unequal_size_still_follow_the_fractions(seed: int) -> None:
    """The first pass gave each split the first free group in the draw whatever its size: five
    dates of 300, 250, 60, 40 and 50 chips split 0.21 / 0.43 / 0.36 with seed 3."""
    sizes = {"d1": 300, "d2": 250, "d3": 60, "d4": 40, "d5": 50}
    groups = {k: Counter({WATER: n // 10, OTHER: n - n // 10}) for k, n in sizes.items()}
    split = _split_of(groups, ChipRules(seed=seed), "date")
    per = _per_split(groups, split)
    share = {s: sum(c.values()) / sum(sizes.values()) for s, c in per.items()}
    assert share["train"] >= 0.4 and max(share["val"], share["test"]) <= 0.45, share
