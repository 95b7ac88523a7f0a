"""The ranker's epoch rule in ``--model auto`` (epoch curves over the internal folds, each fold
scored at the epoch the OTHER folds pick) and the bagged ranker (the mean of several rankers as
one ranker): planted curves, weights kept per evaluated epoch, exact scores, save and load."""

from __future__ import annotations

import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from test_anyshop import planted_clusters

from recsys.errors import RecsysError
from recsys.model import catalog
from recsys.model.auto import internal_folds, leave_one_out
from recsys.model.ranker import RankerRecommender, curve_epoch, mean_curve

TINY = {"dim": 8, "batch_users": 16, "learning_rate": 0.01, "rating_head": False}


def test_the_curve_epoch_is_the_best_mean_over_the_curves() -> None:
    curves = [
        [(5, 0.10), (10, 0.30), (15, 0.20), (20, 0.25)],
        [(5, 0.12), (10, 0.18), (15, 0.40), (20, 0.22)],
        [(5, 0.11), (10, 0.20), (15, 0.35)],  # stopped early: epoch 20 is not common
    ]
    assert mean_curve(curves) == pytest.approx({5: 0.11, 10: 0.68 / 3, 15: 0.95 / 3})
    assert curve_epoch(curves) == 15  # no single curve's own best (10, 15, 15) decides
    assert curve_epoch([[(5, 0.3), (10, 0.3)]]) == 5  # ties: the earliest
    assert curve_epoch([]) is None and curve_epoch([[(5, 0.1)], [(10, 0.2)]]) is None


def test_each_fold_is_scored_at_the_epoch_the_other_folds_pick() -> None:
    """The contest measures the served rule without letting a fold choose its own epochs."""
    planted = [
        [(5, 0.50), (10, 0.10), (15, 0.20)],  # fold 0 alone would pick 5
        [(5, 0.10), (10, 0.30), (15, 0.33)],
        [(5, 0.10), (10, 0.29), (15, 0.30)],
    ]
    used: list[list[int]] = [[] for _ in planted]

    def fake(k: int) -> SimpleNamespace:
        return SimpleNamespace(
            params={"curve": [list(p) for p in planted[k]]},
            use_epoch=lambda epoch, _train, k=k: used[k].append(epoch),
            drop_snapshots=lambda: None,
        )

    auto = catalog.create("auto")
    data = planted_clusters()
    folds = internal_folds(data, 3)
    deferred = [{"ranker": fake(k), "ease": None, "fold": k} for k in range(3)]
    scores, blends = auto._curve_scores(deferred, folds, [h for _, h in folds], [0.5])
    # means: all folds 5 -> 0.233, 10 -> 0.230, 15 -> 0.277: served 15; without fold 0 the
    # others pick 15 (fold 0 scores 0.20 there, not its own best 0.50); without fold 1 or 2
    # the others pick 5 (0.30 over 0.25 and 0.265)
    assert auto.curve["epochs"] == 15
    assert auto.curve["fold_epochs"] == [15, 5, 5]
    assert scores == pytest.approx([0.20, 0.10, 0.10])
    assert blends is None  # no EASE ran: no blend
    assert used == [[], [], []]  # the curves' values are the scores: no weights reloaded


def test_leave_one_out_scores_each_fold_at_the_others_choice() -> None:
    """The blend's (epochs, weight) pair is chosen like the ranker's epochs."""
    keys = [(5, 0.2), (5, 0.8), (10, 0.2), (10, 0.8)]
    tables = [
        {(5, 0.2): 0.9, (5, 0.8): 0.1, (10, 0.2): 0.3, (10, 0.8): 0.3},
        {(5, 0.2): 0.1, (5, 0.8): 0.2, (10, 0.2): 0.4, (10, 0.8): 0.5},
        {(5, 0.2): 0.1, (5, 0.8): 0.2, (10, 0.2): 0.5, (10, 0.8): 0.3},
    ]
    served, chosen, scores = leave_one_out(tables, keys)
    assert served == (10, 0.2)  # means 0.367, 0.167, 0.4, 0.367
    assert chosen == [(10, 0.2), (5, 0.2), (5, 0.2)]  # fold 0 is not scored at its own 0.9
    assert scores == pytest.approx([0.3, 0.1, 0.1])
    assert leave_one_out(tables[:1], keys) == ((5, 0.2), [(5, 0.2)], [0.9])


@pytest.mark.slow
def test_the_curve_keeps_the_weights_of_every_evaluated_epoch() -> None:
    data = planted_clusters()
    fit_part, held_out = internal_folds(data, 1)[0]
    model = RankerRecommender(**TINY, max_epochs=30, eval_every=5)
    history = model.fit_curve(fit_part, held_out, seed=3, patience=10)
    assert [e for e, _ in history.val_ndcg] == [5, 10, 15, 20, 25, 30]
    assert model.params["curve"] == [[e, round(v, 6)] for e, v in history.val_ndcg]
    users = np.arange(data.n_users)
    # the weights kept for epoch 10 are those of a fresh fit for 10 epochs (same seed)
    model.use_epoch(10, fit_part)
    fresh = RankerRecommender(**TINY, epochs=10)
    fresh.fit(fit_part, seed=3)
    np.testing.assert_allclose(model.score_users(users), fresh.score_users(users), atol=1e-5)
    # ... and its contest score is the curve's value at epoch 10
    from recsys.evaluation.tuning import validation_ndcg

    assert validation_ndcg(model, fit_part, held_out) == pytest.approx(
        dict(history.val_ndcg)[10], abs=1e-6
    )
    with pytest.raises(RecsysError, match="no weights of epoch 12"):
        model.use_epoch(12, fit_part)
    model.drop_snapshots()
    with pytest.raises(RecsysError):
        model.use_epoch(10, fit_part)


def _members(data, folds, epochs=(4, 6, 5)):
    members = []
    for (fit_part, _), e in zip(folds, epochs, strict=True):
        m = RankerRecommender(**TINY, epochs=e)
        m.fit(fit_part, seed=e)
        members.append(m)
    return members


@pytest.mark.slow
def test_a_bagged_ranker_scores_the_mean_of_its_members_and_round_trips() -> None:
    data = planted_clusters()
    folds = internal_folds(data, 3)
    members = _members(data, folds)
    for m in members:
        m.extend(data, rating_head=False)  # the members' users pooled from all the ratings
    bag = RankerRecommender.bagged(members, data)
    users = np.arange(data.n_users)
    mean = np.mean([m.score_users(users) for m in members], axis=0)
    np.testing.assert_allclose(bag.score_users(users), mean, rtol=1e-5, atol=1e-6)
    assert bag.params["dim"] == 3 * TINY["dim"] and bag.params["bagged"] == 3
    # one matrix product: the factors the nightly scorer reads give the same scores
    u, v, b = bag.score_factors()
    np.testing.assert_allclose(u[users] @ v.T + b, mean, rtol=1e-5, atol=1e-6)
    # the Keras tower (the nightly verify gate's direct scores) agrees
    np.testing.assert_allclose(bag.direct_scores(users[:20]), mean[:20], rtol=1e-4, atol=1e-5)
    # fold-in: a new user's history is scored as the mean of the members' fold-ins
    items, rows = np.array([0, 3, 7, 3]), np.array([0, 0, 1, 1])
    folded = bag.score_vectors(bag.user_vectors_for(items, rows, 2))
    each = [m.score_vectors(m.user_vectors_for(items, rows, 2)) for m in members]
    np.testing.assert_allclose(folded, np.mean(each, axis=0), rtol=1e-5, atol=1e-6)
    # history contributions sum to the history part of the score
    hist, contributions = bag.history_contributions(5, np.arange(data.n_products))
    assert len(hist) == len(data.products[data.users == 5])
    np.testing.assert_allclose(
        contributions.sum(0) + bag.product_bias, bag.score_users(np.array([5]))[0], atol=1e-5
    )
    with tempfile.TemporaryDirectory() as tmp:
        bag.save(Path(tmp))
        back = catalog.load(Path(tmp))
        assert isinstance(back, RankerRecommender) and back.params["bagged"] == 3
        np.testing.assert_array_equal(back.score_users(users), bag.score_users(users))


@pytest.mark.slow
def test_bagged_needs_members_of_one_shape() -> None:
    data = planted_clusters()
    with pytest.raises(RecsysError, match="at least one member"):
        RankerRecommender.bagged([], data)
    small = planted_clusters(n_users=60)
    a = RankerRecommender(**TINY, epochs=2)
    a.fit(data)
    b = RankerRecommender(**TINY, epochs=2)
    b.fit(small)
    with pytest.raises(RecsysError, match="differ"):
        RankerRecommender.bagged([a, b], data)


@pytest.mark.slow
@pytest.mark.parametrize("serving", ["refit", "bag"])
def test_auto_serves_the_ranker_trained_by_the_measured_rule(serving: str) -> None:
    """With epoch curves the served ranker trains for the curves' epoch count (refit), or is
    the mean of the folds' rankers at it (bag); the selection records the rule's choice."""
    data = planted_clusters()
    auto = catalog.create(
        "auto",
        candidates=["ranker", "popularity"],
        ranker_serving=serving,
        params={"ranker": {**TINY, "max_epochs": 15, "eval_every": 5}},
    )
    auto.fit(data)
    curve = auto.selection["ranker_epochs"]
    assert auto.selection["chosen"] == "ranker"
    assert "blend_epochs" not in curve  # no EASE: no blend
    assert curve["epochs"] in (5, 10, 15) and len(curve["fold_epochs"]) == 5
    means = dict(curve["mean_curve"])
    assert means[curve["epochs"]] == max(means.values())
    ranker = next(c for c in auto.selection["candidates"] if c["model"] == "ranker")
    assert len(ranker["folds"]) == 5
    served = auto.chosen
    assert served.params["epochs"] == curve["epochs"]
    if serving == "bag":
        assert auto.final == "bagged" and served.params["bagged"] == 5
        assert served.params["dim"] == 5 * TINY["dim"]
    else:
        assert auto.final == "refit" and "bagged" not in served.params
        assert served.params["dim"] == TINY["dim"]
    assert served.score_users(np.arange(3)).shape == (3, data.n_products)


def test_given_epochs_or_one_fold_keep_the_single_search() -> None:
    data = planted_clusters()
    fixed = catalog.create("auto", params={"ranker": {"epochs": 3}})
    assert not fixed._use_curves(data, ["ranker"], 5)
    auto = catalog.create("auto")
    assert not auto._use_curves(data, ["ranker"], 1)
    assert not auto._use_curves(data, ["ease"], 5)
    assert auto._use_curves(data, ["ranker", "ease"], 5)
    with pytest.raises(RecsysError, match="ranker_serving"):
        catalog.create("auto", ranker_serving="vote")


@pytest.mark.slow
def test_the_blend_chooses_its_rankers_epochs_and_weight_over_the_folds() -> None:
    data = planted_clusters()
    auto = catalog.create(
        "auto",
        candidates=["ranker", "ease"],
        params={"ranker": {**TINY, "max_epochs": 10, "eval_every": 5}},
    )
    auto.fit(data)
    curve = auto.selection["ranker_epochs"]
    blend = next(c for c in auto.selection["candidates"] if c["model"] == "blend")
    assert (blend["epochs"], blend["weight"]) == (curve["blend_epochs"], curve["blend_weight"])
    assert curve["blend_epochs"] in (5, 10) and len(curve["blend_fold_choices"]) == 5
    assert blend["ndcg@10"] == pytest.approx(np.mean(blend["folds"]), abs=1e-6)
    if auto.selection["chosen"] == "blend":
        assert auto.chosen.ranker.params["epochs"] == curve["blend_epochs"]
        assert auto.chosen.params["weight"] == curve["blend_weight"]
