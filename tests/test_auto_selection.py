"""``--model auto``'s contest: how many internal folds, what each candidate is scored on."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from test_anyshop import planted_clusters

from recsys.model import catalog
from recsys.model.als import implicit_available
from recsys.model.auto import internal_folds, selection_folds
from recsys.model.baselines import PopularityRecommender
from recsys.model.ease import EASERecommender


def test_the_fold_count_follows_the_rating_budget() -> None:
    assert selection_folds(1_000, 250_000, 5) == 5  # small shop: every fold the cap allows
    assert selection_folds(80_000, 250_000, 5) == 3  # 250k // 80k
    assert selection_folds(125_001, 250_000, 5) == 1
    assert selection_folds(21_000_000, 250_000, 5) == 1  # large data: one fold
    assert selection_folds(0, 250_000, 5) == 1
    assert selection_folds(10, 250_000, 0) == 1  # at least one fold
    # the budget holds: beyond the first fold, folds x ratings never exceed it
    for n in (1, 7, 999, 50_000, 83_334, 250_000, 3_000_000):
        k = selection_folds(n, 250_000, 5)
        assert 1 <= k <= 5 and (k == 1 or k * n <= 250_000)


def test_folds_hold_out_different_ratings_of_every_user() -> None:
    data = planted_clusters()
    folds = internal_folds(data, 3)
    assert len(folds) == 3
    held = []
    for fit_part, held_out in folds:
        assert len(fit_part) + len(held_out) == len(data)
        # every user with >= 2 ratings keeps ratings to fit on and has one held out
        assert set(np.unique(held_out.users)) == set(range(data.n_users))
        assert set(np.unique(fit_part.users)) == set(range(data.n_users))
        held.append(set(zip(held_out.users.tolist(), held_out.products.tolist(), strict=True)))
    assert held[0] != held[1] != held[2]


def test_the_contest_scores_the_mean_over_the_folds_and_fits_within_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = planted_clusters()  # 960 ratings: 3 folds under a 3,000-rating budget
    fits: dict[str, list[int]] = {"popularity": [], "ease": []}
    for cls, name in ((PopularityRecommender, "popularity"), (EASERecommender, "ease")):
        original = cls.fit

        def counting(self, train, *args, _original=original, _name=name, **kwargs):
            fits[_name].append(len(train))
            return _original(self, train, *args, **kwargs)

        monkeypatch.setattr(cls, "fit", counting)
    auto = catalog.create(
        "auto", candidates=["popularity", "ease"], selection_ratings=3_000, params={"ease": {}}
    )
    auto.fit(data)
    assert auto.selection["folds"] == 3
    scores = {c["model"]: c for c in auto.selection["candidates"]}
    for c in scores.values():
        assert len(c["folds"]) == 3
        assert c["ndcg@10"] == pytest.approx(np.mean(c["folds"]), abs=1e-6)
    assert auto.selection["chosen"] == "ease"  # the planted winner, on every fold
    assert min(scores["ease"]["folds"]) > max(scores["popularity"]["folds"])
    # popularity: one fit per fold on the fold's fitting part; EASE also refitted on all data
    assert len(fits["popularity"]) == 3 and all(n < len(data) for n in fits["popularity"])
    assert fits["ease"][-1] == len(data)
    # the contest fitted each candidate on at most folds x ratings (within the budget)
    assert sum(fits["popularity"]) <= 3_000


def test_the_contest_ranker_trains_no_rating_head_and_reuses_its_epochs() -> None:
    auto = catalog.create("auto", params={"ranker": {"dim": 8}})
    contest = auto._create("ranker", contest=True, epochs=7)
    assert contest.params["rating_head"] is False and contest.params["epochs"] == 7
    assert auto._create("ranker", contest=True).params["epochs"] is None  # first fold tunes
    served = auto._create("ranker")
    assert served.params["rating_head"] is True and served.params["epochs"] is None
    fixed = catalog.create("auto", params={"ranker": {"epochs": 3}})
    assert fixed._create("ranker", contest=True, epochs=7).params["epochs"] == 3


def test_the_ranker_epochs_are_the_median_of_the_folds_best(monkeypatch) -> None:
    from recsys.evaluation.tuning import fold_count
    from recsys.model.ranker import RankerRecommender

    data = planted_clusters()  # 960 ratings: 5 folds when sized by the data (epoch_folds=0)
    planted = iter([40, 10, 25, 55, 15])
    seen: list[tuple[int, int]] = []

    def fake_search(self, train, epochs, seed, validation=None, **kwargs):
        seen.append((len(train), len(validation)))
        return SimpleNamespace(epochs=next(planted))

    monkeypatch.setattr(RankerRecommender, "_train_tower", fake_search)
    model = RankerRecommender(rating_head=False, epoch_folds=0)
    assert model._search_epochs(data, 0, {}) == 25  # median of 10, 15, 25, 40, 55
    assert model.params["epoch_search"] == [40, 10, 25, 55, 15]
    assert len(seen) == fold_count(len(data)) == 5
    assert all(a + b == len(data) for a, b in seen)  # each fold: fit on 80%, validate on 20%
    planted = iter([30, 10, 20, 50])
    seen.clear()
    even = RankerRecommender(rating_head=False, epoch_folds=4)
    assert even._search_epochs(data, 0, {}) == 20 and len(seen) == 4  # the lower median
    planted = iter([30])
    seen.clear()
    single = RankerRecommender(rating_head=False)  # the default: one search, on fold 0
    assert single._search_epochs(data, 0, {}) == 30 and len(seen) == 1


def test_the_simplest_candidate_within_one_standard_error_wins() -> None:
    from recsys.model.auto import one_standard_error

    def result(model: str, folds: list[float]) -> dict:
        return {"model": model, "ndcg@10": float(np.mean(folds)), "folds": folds}

    # the ranker's lead over EASE (0.004) is below the standard error of their paired
    # per-fold differences (about 0.02): EASE, the simpler, is chosen
    noisy = [
        result("ranker", [0.20, 0.16, 0.22, 0.15, 0.21]),
        result("ease", [0.17, 0.19, 0.18, 0.20, 0.18]),
        result("popularity", [0.10, 0.09, 0.11, 0.10, 0.10]),
    ]
    assert one_standard_error(noisy)["model"] == "ease"
    # the same lead on every fold is beyond its (zero) standard error: the ranker wins
    steady = [
        result("ranker", [0.184, 0.194, 0.174, 0.204, 0.184]),
        result("ease", [0.180, 0.190, 0.170, 0.200, 0.180]),
    ]
    assert one_standard_error(steady)["model"] == "ranker"
    # one fold: the best mean, ties to the simpler
    assert one_standard_error([result("ranker", [0.3]), result("ease", [0.2])])["model"] == "ranker"
    assert one_standard_error([result("blend", [0.3]), result("ease", [0.3])])["model"] == "ease"


@pytest.mark.skipif(not implicit_available(), reason="needs the peers extra (implicit)")
def test_als_settings_are_searched_over_the_folds_and_each_fold_scored_at_the_others_pick(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from recsys.model.als import ALSRecommender
    from recsys.model.auto import leave_one_out

    data = planted_clusters()  # 960 ratings: 3 folds under a 3,000-rating budget
    grid = [(4, 30.0, 10.0), (8, 1.0, 3.0), (8, 0.1, 1.0)]
    fitted: list[tuple[int, tuple]] = []
    original = ALSRecommender.fit_setting

    def recording(self, train, *setting, **kwargs):
        fitted.append((len(train), tuple(setting)))
        return original(self, train, *setting, **kwargs)

    monkeypatch.setattr(ALSRecommender, "fit_setting", recording)
    auto = catalog.create(
        "auto",
        candidates=["popularity", "als"],
        selection_ratings=3_000,
        params={"als": {"grid": grid, "iterations": 3}},
    )
    auto.fit(data)
    search = auto.selection["als_search"]
    tables = [{} for _ in range(3)]
    # every setting fitted once on each fold's fitting part (no split nested in a fold)
    contest = fitted[: 3 * len(grid)]
    assert [s for _, s in contest] == [s for s in grid for _ in range(3)]
    assert all(n < len(data) for n, _ in contest)
    assert [tuple(s[:3]) for s in search["searched"]] == grid
    als = next(c for c in auto.selection["candidates"] if c["model"] == "als")
    # rebuild the folds' tables from the per-fold scores the search recorded
    folds = internal_folds(data, 3)
    from recsys.model.auto import contest_sample, internal_ndcg

    for k, (fit_part, held_out) in enumerate(folds):
        for setting in grid:
            model = ALSRecommender(iterations=3)
            original(model, fit_part, *setting, seed=0)
            tables[k][setting] = internal_ndcg(model, fit_part, contest_sample(held_out, 5_000))
    served, picks, scores = leave_one_out(tables, grid)
    assert tuple(search["setting"]) == served
    assert [tuple(p) for p in search["fold_settings"]] == picks
    np.testing.assert_allclose(als["folds"], scores, atol=1e-6)
    # the planted clusters beat popularity: ALS is served, refitted on all data at its setting
    assert auto.selection["chosen"] == "als"
    assert fitted[-1] == (len(data), served) and len(fitted) == 3 * len(grid) + 1
    assert auto.chosen.params["fitted"] == list(served)
