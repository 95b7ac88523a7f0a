"""The training time budget: the ranker's epoch search stops at its deadline with the best epoch
so far; the ranker serves its search weights when no refit fits; ``auto`` skips candidates by
its stated rule and serves the contest fit extended to all ratings when no refit fits."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from recsys.model.auto import MIN_CANDIDATE_S, AutoRecommender, contest_sample
from recsys.model.rank_trainer import RankerTrainer
from recsys.model.ranker import RankerRecommender, history_matrix
from tests.test_anyshop import planted_clusters
from tests.test_rank_trainer import _data

FAST = {"dim": 8, "batch_users": 8, "rating_head": False}


class _Clock:
    """A monotonic clock the test moves by hand (``after_first``: jumps there after the first
    reading, the one that sets a deadline)."""

    def __init__(self, after_first: float | None = None) -> None:
        self.now = 0.0
        self.after_first = after_first
        self.calls = 0

    def __call__(self) -> float:
        self.calls += 1
        if self.calls == 2 and self.after_first is not None:
            self.now = self.after_first
        return self.now


def _scripted_trainer(scores: list[float], clock: _Clock, epoch_seconds: float = 10.0):
    """A trainer whose epochs take ``epoch_seconds`` on ``clock`` and whose validations return
    ``scores`` in turn; the averaged weights of epoch e are every weight set to e."""
    data = _data()
    model = RankerRecommender(**FAST, eval_every=1, patience=3)
    model.text = data.text
    trainer = RankerTrainer(model, data, seed=0, clock=clock)
    state = {"epoch": 0}

    def run_epoch(epoch, epochs, fields, deadline=None):
        clock.now += epoch_seconds
        state["epoch"] = epoch
        return 1.0 / epoch

    trainer.run_epoch = run_epoch
    trainer.validate = lambda validation, averages=None: scores[state["epoch"] - 1]
    trainer.optimizer.averages = lambda: [
        np.full(v.shape, float(state["epoch"]), dtype=np.float32) for v in trainer.variables
    ]
    return trainer, data


def test_the_budget_stops_the_epoch_search_and_keeps_the_best_epoch(caplog) -> None:
    clock = _Clock()
    trainer, data = _scripted_trainer([0.1, 0.3, 0.2, 0.9, 0.9], clock)
    with caplog.at_level(logging.INFO):
        result = trainer.run(10, data, deadline=35.0)
    # after epoch 3 (t=30) another 10 s epoch would end at 40 > 35: stop, keep epoch 2
    assert len(result.losses) == 3 and result.budget_stop
    assert result.epochs == 2
    assert result.validation == [(1, 0.1), (2, 0.3), (3, 0.2)]
    assert result.epoch_seconds == (10.0, 10.0, 10.0)
    assert all(np.all(v.numpy() == 2.0) for v in trainer.variables)  # epoch 2's weights
    assert any("time budget reached after epoch 3" in r.getMessage() for r in caplog.records)


def test_the_budget_evaluates_the_epoch_where_it_stops_off_the_grid() -> None:
    clock = _Clock()
    trainer, data = _scripted_trainer([0.1, 0.2, 0.5, 0.4], clock)
    trainer.params["eval_every"] = 5  # the grid would evaluate epoch 5 first
    result = trainer.run(10, data, deadline=35.0)
    assert result.validation == [(3, 0.5)] and result.epochs == 3 and result.budget_stop


def test_without_a_deadline_patience_ends_the_search_as_before() -> None:
    clock = _Clock()
    trainer, data = _scripted_trainer([0.1, 0.3, 0.2, 0.2, 0.2, 0.9], clock)
    result = trainer.run(10, data)
    assert len(result.losses) == 5 and not result.budget_stop and result.epochs == 2


def test_the_ranker_serves_its_search_weights_when_no_refit_fits() -> None:
    data = _data(per_user=20)
    model = RankerRecommender(**FAST, epochs=None, max_epochs=20, time_budget_s=1e-3)
    history = model.fit(data, seed=0)
    # the first epoch already ends past the budget: the search keeps it, no refit
    assert model.params["tuned_epochs"] == 1 and model.params["refit"] is False
    assert "time budget" in history.stopped_reason
    assert len(history.train_loss) == 1
    # the user vectors pool ALL training ratings, not only the search's fitting part
    full = history_matrix(data)
    items, rows = full.indices, np.repeat(np.arange(data.n_users), np.diff(full.indptr))
    np.testing.assert_allclose(
        model.user_vectors, model.user_vectors_for(items, rows, data.n_users), atol=1e-5
    )


def test_the_ranker_without_a_budget_refits() -> None:
    model = RankerRecommender(**FAST, epochs=None, max_epochs=2, eval_every=1)
    model.fit(_data(per_user=20), seed=0)
    assert model.params["refit"] is True


def test_auto_skips_a_candidate_when_too_little_budget_is_left() -> None:
    clock = _Clock(after_first=100.0 - MIN_CANDIDATE_S + 1)
    auto = AutoRecommender(
        candidates=["ease", "popularity"], time_budget_s=100.0, budget_min_ratings=0, clock=clock
    )
    # under MIN_CANDIDATE_S left once the fit has started: ease is not started, popularity
    # (free) still runs and is served
    auto.fit(planted_clusters())
    assert [c["model"] for c in auto.selection["candidates"]] == ["popularity"]
    skipped = {s["model"]: s["reason"] for s in auto.selection["skipped"]}
    assert skipped["ease"].startswith("time budget")
    assert auto.chosen_name == "popularity"
    assert auto.skip_reason("popularity") is None


def test_auto_with_time_left_starts_every_candidate_and_refits() -> None:
    auto = AutoRecommender(
        candidates=["ease", "popularity"], time_budget_s=1e6, budget_min_ratings=0
    )
    auto.fit(planted_clusters())
    assert {c["model"] for c in auto.selection["candidates"]} == {"ease", "popularity"}
    assert auto.selection["budget"]["final"] == "refit"


class _Jump:
    """A progress sink that moves ``clock`` by ``seconds`` when a phase containing ``phase``
    starts."""

    def __init__(self, clock: _Clock, phase: str, seconds: float):
        self.clock, self.phase, self.seconds = clock, phase, seconds

    def start(self, phase, total, unit="items"):
        if self.phase in phase:
            self.clock.now += self.seconds

    def advance(self, n=1, **fields):
        pass

    def update(self, completed, **fields):
        pass

    def finish(self):
        pass


def test_auto_serves_the_contest_ranker_extended_when_no_refit_fits() -> None:
    clock = _Clock()
    data = _data(per_user=20)
    ranker = {**FAST, "epochs": 2, "rating_head": True, "rating_epochs": 1}
    auto = AutoRecommender(
        candidates=["ranker"],
        time_budget_s=1000.0,
        budget_min_ratings=0,
        params={"ranker": ranker},
        clock=clock,
    )
    # the contest measurement of the ranker uses up the budget: no refit fits any more
    auto.fit(data, progress=_Jump(clock, "contest NDCG@10 of ranker", 2000.0))
    assert auto.chosen_name == "ranker" and auto.selection["budget"]["final"] == "extended"
    served = auto.chosen
    # with the budget spent, no rating head either (the lists do not use it)
    assert served.params["extended"] and not served.predicts_ratings
    assert {"model": "ranker rating head", "reason": "time budget: 0 s left"} in (
        auto.selection["skipped"]
    )
    full = history_matrix(data)
    items, rows = full.indices, np.repeat(np.arange(data.n_users), np.diff(full.indptr))
    np.testing.assert_allclose(
        served.user_vectors, served.user_vectors_for(items, rows, data.n_users), atol=1e-5
    )
    # with enough of the budget left, the served ranker would train its head
    clock.now = 0.0
    assert auto._rating_head(True) and not auto._rating_head(False)


def test_the_contest_sample_is_seeded_and_bounded() -> None:
    data = _data(n_users=40)
    assert contest_sample(data, 0) is data and contest_sample(data, 40) is data
    a, b = contest_sample(data, 10), contest_sample(data, 10)
    assert len(np.unique(a.users)) == 10
    np.testing.assert_array_equal(a.users, b.users)


def test_auto_time_budget_is_a_validated_parameter() -> None:
    from recsys.errors import RecsysError
    from recsys.model import catalog

    assert catalog.create("auto", time_budget_s=None).params["time_budget_s"] is None
    with pytest.raises(RecsysError, match="time_budget_s"):
        catalog.create("auto", time_budget_s="soon")


def test_auto_out_of_time_after_the_contest_still_serves_a_working_model() -> None:
    clock = _Clock()
    data = planted_clusters()
    ranker = {**FAST, "epochs": 2}
    auto = AutoRecommender(
        candidates=["ranker", "ease"],
        time_budget_s=1000.0,
        budget_min_ratings=0,
        params={"ranker": ranker},
        clock=clock,
    )
    auto.fit(data, progress=_Jump(clock, "contest NDCG@10 of ease", 2000.0))
    final = auto.selection["budget"]["final"]
    if auto.chosen_name in ("ranker", "blend"):
        assert final == "extended"
    else:
        assert final == "refit with tuned parameters"
        assert auto.chosen.params["lam"] == auto.chosen.params.get(
            "tuned_lam", auto.chosen.params["lam"]
        )
    scores = auto.score_users(np.arange(data.n_users))
    assert scores.shape == (data.n_users, data.n_products) and np.all(np.isfinite(scores))


def test_auto_trains_small_data_without_a_budget() -> None:
    clock = _Clock(after_first=1e9)  # the budget would be long gone
    auto = AutoRecommender(candidates=["ease", "popularity"], time_budget_s=1.0, clock=clock)
    data = planted_clusters()
    assert len(data) < auto.params["budget_min_ratings"]
    auto.fit(data)
    assert {c["model"] for c in auto.selection["candidates"]} == {"ease", "popularity"}
    assert "budget" not in auto.selection and auto.deadline is None


def test_an_epoch_running_past_the_deadline_ends_after_its_batch(caplog) -> None:
    data = _data(n_users=80)
    model = RankerRecommender(**FAST, eval_every=1)
    model.text = data.text
    clock = _Clock()
    trainer = RankerTrainer(model, data, seed=0, clock=clock)
    assert trainer.steps_per_epoch() > 2
    steps = []
    step = trainer.train_step

    def counted(batch):
        steps.append(1)
        clock.now += 10.0
        return step(batch)

    trainer.train_step = counted
    with caplog.at_level(logging.INFO):
        result = trainer.run(5, data, deadline=15.0)
    # the second batch ends at t=20 > 15: the first epoch ends there, is evaluated and kept
    assert len(steps) == 2 and len(result.losses) == 1
    assert result.budget_stop and result.epochs == 1 and len(result.validation) == 1
    assert any("epoch 1 ended after 2 steps" in r.getMessage() for r in caplog.records)


def test_auto_does_not_start_a_candidate_with_less_than_its_share_left() -> None:
    clock = _Clock()
    auto = AutoRecommender(time_budget_s=480.0, clock=clock)
    auto.deadline = 100.0  # 100 s left: under the ranker's share, above ALS's and the minimum
    assert "under its share (288 s)" in auto.skip_reason("ranker")
    assert auto.skip_reason("als") is None and auto.skip_reason("ease") is None
    clock.now = 90.0  # 10 s left
    assert "under 20 s" in auto.skip_reason("als") and auto.skip_reason("popularity") is None
    auto.deadline = None
    assert auto.skip_reason("ranker") is None
