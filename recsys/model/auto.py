"""``--model auto``: train the candidates that fit the data, serve the best one.

1. Candidates: every catalogue spec marked ``auto_candidate`` whose needs the data meets
   (``ranker``; ``ease`` while the catalogue's dense Gram matrix fits ``ease_memory_mb``, see
   :func:`recsys.model.ease.ease_max_products`; ``als`` when ``implicit`` is installed, the
   ``peers`` extra; ``popularity``), plus ``blend`` (ranker + EASE) when both ran.
2. Each is fitted on the fitting part of every TRAIN-INTERNAL fold (:func:`internal_folds`:
   20% of each user's training ratings held out, seeds 4242, 4243, ...; fold 0 is the split
   the ranker tunes its epochs on) and scored by NDCG@10 on that fold's held-out part; its
   contest score is the mean over the folds. The number of folds follows the data's size
   (:func:`selection_folds`: ``clamp(selection_ratings // n_ratings, 1, max_folds)``, by
   default at most 5 folds and at most 250,000 fitted ratings per candidate beyond one
   fold), because a single 20% hold-out of a small shop is too noisy to rank candidates
   that differ by a few thousandths. Each candidate tunes its own hyper-parameters on a
   split of a fold's fitting part, never on a held-out part (the ranker trains no rating head
   in the contest: ranking never reads it); the blend's weight is the one with the best mean
   NDCG@10 over the folds from the fold's fitted ranker and EASE (its pure ends are the two
   candidates themselves), so the blend wins only where a mix beats both.
   **The ranker's epochs** with two folds or more (and no time budget, no given epochs): on
   every fold the ranker trains up to ``max_epochs`` and its NDCG@10 on the fold's held-out
   part is measured every ``eval_every`` epochs, stopping after :data:`CURVE_PATIENCE`
   evaluations without gain (its epoch curve; the weights of every evaluated epoch are kept).
   The served epoch count is the one with the best MEAN over the folds' curves
   (:func:`recsys.model.ranker.curve_epoch`). The contest measures that rule without letting a
   fold pick its own epochs: fold ``k`` scores its ranker (and the blend on fold ``k`` mixes
   it) at the epoch count the mean curve of the OTHER folds picks; the blend's ranker epoch
   count and weight are chosen as one pair the same way (:func:`leave_one_out`). With one
   fold (large data,
   or under a budget) the ranker tunes its epochs on a split of the first fold's fitting part
   and reuses that count on later folds.
   **ALS's setting** with two folds or more (no time budget, no given setting) is searched on
   the folds themselves the same way (:meth:`AutoRecommender._als_fold_scores`): the staged
   search of :mod:`recsys.model.als` fits each setting on every fold and follows the best
   mean; the served setting is the best mean, fold ``k`` is scored at the OTHER folds' pick.
3. The winner (:func:`one_standard_error`: the simplest candidate, in the order of
   :data:`SIMPLER_FIRST`, whose mean is within one standard error of the paired per-fold
   differences from the best mean; with one fold the best mean) is refitted on all the
   training data; that is the model that is saved and served (its own ``recommender.json``).
   A ranker chosen with epoch curves trains for the curves' epoch count (the blend's ranker:
   for its pair's count) (``ranker_serving="refit"``), or is served as the mean of the folds'
   rankers at the ranker's count, user vectors pooled from all training ratings (``"bag"``,
   :meth:`recsys.model.ranker.RankerRecommender.bagged`: one ranker of width K x ``dim``).

Time budget (``time_budget_s``, default :data:`DEFAULT_TIME_BUDGET_S`; None or 0: none),
for training data of at least ``budget_min_ratings`` ratings (default
:data:`DEFAULT_BUDGET_MIN_RATINGS`; smaller data trains without one, so its result never
depends on the machine's load). The whole ``fit`` aims to end within it; every cut is logged
and recorded in ``selection["budget"]``:

* the contest's NDCG@10 is measured on at most ``contest_users`` held-out users (a sample with
  seed :data:`INTERNAL_SEED`; all of them on smaller data), because a full evaluation of every
  user against every product costs minutes at the Electronics shape;
* the ranker's contest fit trains no rating head (the contest ranks; the head only predicts
  ratings), and the ranker may use :data:`RANKER_SHARE` of the budget, ALS
  :data:`ALS_SHARE` (its grid stops at its share with the best setting so far), each capped by
  the time left; the ranker's epoch search stops at its share with its best epoch so far;
* skip rule: a candidate is not started when less than :data:`MIN_CANDIDATE_S` seconds of
  the budget are left, or less than its share (ranker, ALS) (popularity, which costs nothing,
  always runs); under a budget ALS measures each grid setting on a seeded sample of at most
  ``DEFAULT_CONTEST_USERS`` validation users;
* the winner is refitted on all training data when its projected refit (its contest fit
  seconds times the ratio of the rating counts) fits in the time left; otherwise a model that
  can re-pool its users from a longer history (the ranker: :meth:`RankerRecommender.extend`)
  is served as fitted in the contest with its user vectors pooled from ALL training ratings
  (the blend: that ranker, EASE refitted with its contest lambda, the contest's weight), and
  any other is refitted with the hyper-parameters it tuned in the contest. That ranker trains
  its rating head only with at least :data:`MIN_RATING_HEAD_S` left (it predicts ratings for
  the evaluation protocol; the lists do not use it); otherwise it is served without one.

Under a budget the contest uses one internal fold. Below the budget nothing changes and
training is deterministic per seed; a run the budget cuts
short depends on the machine's speed.

``selection`` holds every candidate's mean internal NDCG@10, its per-fold values and fit
seconds summed over the folds (stored as ``model_runs.metrics["auto"]``, with ``folds``),
``internal`` the winner's and popularity's mean internal NDCG@10
(``model_runs.metrics["internal"]``). Test data is never seen: the protocol's test part is cut
before training reads anything.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from recsys.errors import DataError, RecsysError
from recsys.model.base import FitHistory, RatingData
from recsys.progress import NO_PROGRESS, ProgressSink

_log = logging.getLogger(__name__)
INTERNAL_SEED = 4242
"""The seed of the train-internal split (the ranker's epoch-tuning split)."""
BLEND = "blend"
POPULARITY = "popularity"
DEFAULT_TIME_BUDGET_S = 480.0
"""Default wall seconds of one ``auto`` fit (the nightly train step's target is 10 minutes,
reading the data and writing the artifacts included)."""
DEFAULT_BUDGET_MIN_RATINGS = 500_000
"""Below this many training ratings ``auto`` trains without a time budget."""
DEFAULT_CONTEST_USERS = 5_000
"""Default number of held-out users the contest's NDCG@10 is measured on (a seeded sample)."""
RANKER_SHARE = 0.6
"""Share of the budget the ranker's contest fit may use."""
ALS_SHARE = 0.15
"""Share of the budget the ALS contest fit (grid and refit on the fitting part) may use."""
MIN_CANDIDATE_S = 20.0
"""A candidate other than popularity is not started with fewer seconds of the budget left."""
MIN_RATING_HEAD_S = 60.0
"""A ranker served from the contest trains its rating head only with this much budget left."""
DEFAULT_SELECTION_RATINGS = 250_000
"""The contest's fitting budget per candidate, in ratings (:func:`selection_folds`)."""
DEFAULT_MAX_FOLDS = 5
"""The most internal folds of the contest."""
SIMPLER_FIRST = ("popularity", "ease", "als", "ranker", BLEND)
"""The candidates from the simplest (fewest fitted settings, no training noise) to the most
complex: the order of the one-standard-error rule (:func:`one_standard_error`)."""
CURVE_PATIENCE = 6
"""With several folds, the ranker's epoch curve on each fold stops after this many evaluations
without gain (``eval_every`` epochs apart)."""
CURVE_MEMORY_MB = 1024
"""The most memory the ranker's kept epoch weights may take over all folds (else the contest
falls back to the single epoch search)."""
RANKER_SERVING = ("refit", "bag")
"""How a ranker chosen with epoch curves is served: refitted on all training data for the
curves' epoch count, or the mean of the folds' rankers at that epoch count."""
# (the same defaults as recsys.evaluation.tuning.FOLD_RATINGS / MAX_FOLDS)


def internal_split(train: RatingData, seed: int = INTERNAL_SEED) -> tuple[RatingData, RatingData]:
    """(fitting part, held-out part): the train-internal split, relevance made explicit.

    On implicit data (under 10% of ratings >= 4) every held-out rating counts as relevant, as
    the ranker treats its targets there.
    """
    from recsys.evaluation.tuning import internal_rank_split

    fit_part, held_out = internal_rank_split(train, seed=seed)
    if len(train) and np.mean(train.ratings >= 4) < 0.1:
        held_out = replace(held_out, ratings=np.full(len(held_out), 5.0, dtype=np.float32))
    return fit_part, held_out


def selection_folds(n_ratings: int, rating_budget: int, max_folds: int) -> int:
    """How many internal folds the contest uses (:func:`recsys.evaluation.tuning.fold_count`)."""
    from recsys.evaluation.tuning import fold_count

    return fold_count(n_ratings, rating_budget, max_folds)


def internal_folds(train: RatingData, n_folds: int) -> list[tuple[RatingData, RatingData]]:
    """``n_folds`` train-internal splits: :func:`internal_split` with seeds ``INTERNAL_SEED + k``.

    Fold 0 is the split the ranker tunes its epochs on; each fold draws its own 20% per user.
    """
    return [internal_split(train, seed=INTERNAL_SEED + k) for k in range(max(1, int(n_folds)))]


def one_standard_error(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The contest's winner: the simplest candidate within one standard error of the best.

    ``results`` carry each candidate's mean internal NDCG@10 (``ndcg@10``) and per-fold values
    (``folds``). The best mean wins outright with one fold. With more, a candidate whose mean
    is below the best's by at most the standard error of their per-fold differences (paired:
    the same held-out users) cannot be told apart from it on these folds, and the simplest
    of those (:data:`SIMPLER_FIRST`; others after, in catalogue order) is chosen: on a shop
    so small that the folds cannot separate the candidates, the choice falls to the one whose
    fit varies least. Ties of the mean: the simpler.
    """
    from recsys.model import catalog

    order = {n: i for i, n in enumerate(SIMPLER_FIRST)}
    for i, n in enumerate(catalog.SPECS):
        order.setdefault(n, len(SIMPLER_FIRST) + i)
    best = max(results, key=lambda r: (r["ndcg@10"], -order.get(r["model"], 99)))
    folds = np.asarray(best.get("folds") or [], dtype=np.float64)
    if len(folds) < 2:
        return best
    close = []
    for r in results:
        other = np.asarray(r.get("folds") or [], dtype=np.float64)
        if len(other) != len(folds):
            continue
        gap = folds - other
        error = float(gap.std(ddof=1) / np.sqrt(len(gap)))
        if float(gap.mean()) <= error:
            close.append(r)
    return min(close or [best], key=lambda r: order.get(r["model"], 99))


def leave_one_out(tables: list[dict[Any, float]], keys: list[Any]) -> tuple[Any, list, list]:
    """(served key, each fold's key, each fold's score) of a setting chosen over folds.

    ``tables[k][key]`` is fold k's internal NDCG@10 with setting ``key``. The served key has
    the best mean over all the folds; fold k is scored at the key with the best mean over the
    OTHER folds (so no fold is scored at the setting it chose; one fold: its own best). Ties:
    the first key in ``keys``.
    """

    def best(rows: list[dict[Any, float]]) -> Any:
        means = {key: float(np.mean([r[key] for r in rows])) for key in keys}
        top = max(means.values())
        return next(key for key in keys if means[key] == top)

    served = best(tables)
    chosen = [
        best(tables[:k] + tables[k + 1 :]) if len(tables) > 1 else served
        for k in range(len(tables))
    ]
    return served, chosen, [float(t[key]) for t, key in zip(tables, chosen, strict=True)]


def internal_ndcg(model: Any, fit_part: RatingData, held_out: RatingData) -> float:
    """NDCG@10 of a model fitted on ``fit_part`` on the held-out part."""
    from recsys.evaluation.tuning import validation_ndcg

    return float(validation_ndcg(model, fit_part, held_out))


def contest_sample(held_out: RatingData, limit: int) -> RatingData:
    """The held-out ratings of at most ``limit`` users (seeded; all of them when fewer)."""
    users = np.unique(held_out.users)
    if limit <= 0 or len(users) <= limit:
        return held_out
    chosen = np.random.default_rng(INTERNAL_SEED).choice(users, limit, replace=False)
    return held_out.subset(np.isin(held_out.users, chosen))


def internal_metrics(factory: Any, train: RatingData, seed: int = 0) -> dict[str, Any]:
    """``model_runs.metrics["internal"]`` of a model type: a fresh fit on the fitting part.

    Args:
        factory: makes an untrained model.
        train: all the training data.
        seed: training seed.
    """
    from recsys.model import catalog

    fit_part, held_out = internal_split(train)
    model = factory()
    model.fit(fit_part, seed=seed)
    popularity = catalog.create(POPULARITY)
    popularity.fit(fit_part, seed=seed)
    return {
        "ndcg@10": internal_ndcg(model, fit_part, held_out),
        "popularity_ndcg@10": internal_ndcg(popularity, fit_part, held_out),
        "seed": INTERNAL_SEED,
    }


def _hooks(
    model: Any, progress: ProgressSink, should_stop: Callable[[], bool] | None
) -> dict[str, Any]:
    """The ``progress``/``should_stop`` keywords that ``model.fit`` takes."""
    accepted = inspect.signature(model.fit).parameters
    hooks = {"progress": progress, "should_stop": should_stop}
    return {k: v for k, v in hooks.items() if k in accepted}


class AutoRecommender:
    """Selects and wraps the served model (see the module docstring).

    Args:
        candidates: model names to try (None: the catalogue's auto candidates).
        ease_memory_mb: EASE's memory budget; larger catalogues leave EASE (and blend) out.
        params: per-candidate parameters, by model name.
        time_budget_s: wall seconds the fit aims to end within (None or 0: no budget).
        budget_min_ratings: the budget applies from this many training ratings.
        contest_users: held-out users the contest is measured on (0: all).
        clock: monotonic seconds (the budget's clock; tests pass a fake one).
        selection_ratings: the contest's fitting budget in ratings per candidate; it sets the
            number of internal folds (:func:`selection_folds`).
        max_folds: the most internal folds the contest uses.
        ranker_serving: with epoch curves, "refit" (the ranker refitted on all training data
            for the curves' epoch count) or "bag" (the mean of the folds' rankers at it, users
            pooled from all training ratings; see :meth:`RankerRecommender.bagged`; inside
            the blend too, at the ranker's epoch count).
    """

    name = "auto"

    def __init__(
        self,
        *,
        candidates: tuple[str, ...] | list[str] | None = None,
        ease_memory_mb: int = 4096,
        params: dict[str, dict[str, Any]] | None = None,
        time_budget_s: float | None = DEFAULT_TIME_BUDGET_S,
        budget_min_ratings: int = DEFAULT_BUDGET_MIN_RATINGS,
        contest_users: int = DEFAULT_CONTEST_USERS,
        clock: Any = time.monotonic,
        selection_ratings: int = DEFAULT_SELECTION_RATINGS,
        max_folds: int = DEFAULT_MAX_FOLDS,
        ranker_serving: str = "refit",
    ) -> None:
        self.params: dict[str, Any] = {
            "candidates": None if candidates is None else list(candidates),
            "ease_memory_mb": int(ease_memory_mb),
            "params": {k: dict(v) for k, v in (params or {}).items()},
            "time_budget_s": float(time_budget_s) if time_budget_s else None,
            "budget_min_ratings": int(budget_min_ratings),
            "contest_users": int(contest_users),
            "selection_ratings": int(selection_ratings),
            "max_folds": int(max_folds),
            "ranker_serving": str(ranker_serving),
        }
        if self.params["ranker_serving"] not in RANKER_SERVING:
            raise RecsysError(
                f"ranker_serving must be one of {', '.join(RANKER_SERVING)}, got {ranker_serving}"
            )
        self.clock = clock
        self.deadline: float | None = None
        self.final: str | None = None
        """How the served model was made: "refit", "extended" or "refit with tuned
        parameters" (see the module docstring)."""
        self.chosen: Any = None
        self.chosen_name: str | None = None
        self.chosen_params: dict[str, Any] = {}
        self.selection: dict[str, Any] = {}
        self.internal: dict[str, Any] = {}
        self.curve: dict[str, Any] = {}
        """With epoch curves: the served epoch count, each fold's, the mean curve."""
        self.members: list[Any] = []
        """With ``ranker_serving="bag"``: the folds' rankers at the served epoch count."""
        self.als_search: dict[str, Any] = {}
        """With ALS searched over the folds: the served setting, each fold's, every mean."""

    # --- which candidates ---------------------------------------------------------------

    def plan(self, data: RatingData) -> tuple[list[str], list[dict[str, str]]]:
        """(candidates to train, [{"model", "reason"}] left out) for this data."""
        from recsys.model import catalog
        from recsys.model.ease import ease_max_products

        wanted = self.params["candidates"]
        if wanted is None:
            wanted = [n for n, s in catalog.SPECS.items() if s.auto_candidate]
        run: list[str] = []
        skipped: list[dict[str, str]] = []
        has_text = data.has_text is not None and bool(np.any(data.has_text))
        for name in wanted:
            spec = catalog.spec(name)
            if name in (catalog.AUTO, BLEND):
                continue
            if not spec.available():
                skipped.append(
                    {"model": name, "reason": f"needs pip install 'recsys[{spec.extra}]'"}
                )
            elif spec.needs_text and not has_text:
                skipped.append({"model": name, "reason": "no product text"})
            elif name == "ease" and data.n_products > ease_max_products(
                self.params["ease_memory_mb"]
            ):
                skipped.append(
                    {
                        "model": name,
                        "reason": f"{data.n_products} products exceed the "
                        f"{self.params['ease_memory_mb']} MiB budget "
                        f"({ease_max_products(self.params['ease_memory_mb'])} products)",
                    }
                )
            else:
                run.append(name)
        return run, skipped

    def left(self) -> float | None:
        """Seconds of the budget left (None without a budget)."""
        return None if self.deadline is None else self.deadline - self.clock()

    def candidate_budget(self, name: str) -> float | None:
        """The time budget a candidate's contest fit gets (None: unlimited)."""
        left = self.left()
        if left is None:
            return None
        share = {"ranker": RANKER_SHARE, "als": ALS_SHARE}.get(name)
        if share is None:
            return None
        return max(1.0, min(left, share * self.params["time_budget_s"]))

    def skip_reason(self, name: str) -> str | None:
        """Why candidate ``name`` is not started now (None: start it); see the module."""
        left = self.left()
        if left is None or name == POPULARITY:
            return None
        if left < MIN_CANDIDATE_S:
            return f"time budget: {max(left, 0.0):.0f} s left, under {MIN_CANDIDATE_S:.0f} s"
        share = {"ranker": RANKER_SHARE, "als": ALS_SHARE}.get(name)
        if share is not None and left < share * self.params["time_budget_s"]:
            return (
                f"time budget: {left:.0f} s left, under its share "
                f"({share * self.params['time_budget_s']:.0f} s)"
            )
        return None

    def _create(self, name: str, *, contest: bool = False, epochs: int | None = None) -> Any:
        """A candidate; ``contest``: the contest's variant (see :meth:`fit`).

        In the contest the ranker trains without its rating head (``score_users`` never reads
        it) and, once the first fold has tuned its epochs, later folds reuse that count; under
        a time budget the ranker and ALS get their share of it.
        """
        from recsys.model import catalog

        params = dict(self.params["params"].get(name, {}))
        if name == "ease":
            params.setdefault("memory_mb", self.params["ease_memory_mb"])
        if contest and name in ("ranker", "als"):
            budget = self.candidate_budget(name)
            if budget is not None:
                params.setdefault("time_budget_s", budget)
            if name == "ranker":
                params["rating_head"] = False  # the contest ranks; the head predicts ratings
            if name == "ranker" and epochs is not None and params.get("epochs") is None:
                params["epochs"] = int(epochs)
        return catalog.create(name, **params)

    # --- ALS searched over the folds -------------------------------------------------------

    def _search_als_over_folds(self, names: list[str], n_folds: int) -> bool:
        """Whether ALS's settings are searched over the contest's folds (see :meth:`fit`).

        With two or more folds and no time budget, unless its setting is given.
        """
        given = self.params["params"].get("als", {})
        fixed = all(given.get(k) is not None for k in ("factors", "regularization", "alpha"))
        return "als" in names and n_folds >= 2 and self.deadline is None and not fixed

    def _als_fold_scores(
        self,
        folds: list[tuple[RatingData, RatingData]],
        contests: list[RatingData],
        seed: int,
        progress: ProgressSink,
    ) -> list[float]:
        """ALS's contest score per fold, its settings searched on the folds themselves.

        The staged search of :mod:`recsys.model.als` runs once over all the folds: each
        setting is fitted on every fold's fitting part and scored on its held-out part, and a
        stage continues from the setting with the best MEAN over the folds. The served setting
        is the best mean; fold ``k`` is scored at the setting the OTHER folds' mean picks
        (:func:`leave_one_out`, as the ranker's epochs), so no fold is scored at its own
        choice. This replaces a search nested inside each fold (a split of the fold's fitting
        part), which tunes on 64% of the ratings and one noisy hold-out. The stages that are
        tried follow all the folds' means, so fold ``k`` has a say in which settings are
        tried, never in which one it is scored at.
        """
        from recsys.model import als as als_module

        probe = self._create("als", contest=True)
        grid = probe.params.get("grid")
        tables: list[dict[tuple, float]] = [{} for _ in folds]
        planned = (len(grid) if grid is not None else als_module.SEARCH_SETTINGS) * len(folds)
        progress.start("auto: ALS settings over the folds", planned, "fits")

        def score(setting: tuple) -> float:
            for k, ((fit_part, _), contest) in enumerate(zip(folds, contests, strict=True)):
                model = self._create("als", contest=True)
                model.fit_setting(fit_part, *setting, seed=seed)
                tables[k][setting] = internal_ndcg(model, fit_part, contest)
                progress.update(1)
            return float(np.mean([t[setting] for t in tables]))

        searched = als_module.staged_search(score, grid)
        progress.finish()
        keys = list(searched)
        served, picks, scores = leave_one_out(tables, keys)
        self.als_search = {
            "setting": [int(served[0]), float(served[1]), float(served[2])],
            "fold_settings": [[int(f), float(r), float(a)] for f, r, a in picks],
            "searched": [[*key, round(value, 6)] for key, value in searched.items()],
        }
        _log.info(
            "auto: ALS over the folds picks %s (each fold scored at the others' pick: %s)",
            served,
            picks,
        )
        return scores

    # --- the ranker's epoch curves ----------------------------------------------------------

    def _use_curves(self, train: RatingData, names: list[str], n_folds: int) -> bool:
        """Whether the contest trains the ranker as epoch curves (see :meth:`_curve_scores`).

        With two or more folds and no time budget, unless the ranker's epochs are given, its
        tower trains elsewhere (a tower runner keeps no epoch weights) or the kept weights
        would exceed :data:`CURVE_MEMORY_MB`.
        """
        from recsys.model import catalog
        from recsys.model.ranker import TOWER_RUNNER

        if n_folds < 2 or self.deadline is not None or "ranker" not in names:
            return False
        given = {**catalog.RankerConfig().model_dump(), **self.params["params"].get("ranker", {})}
        if given.get("epochs") is not None or TOWER_RUNNER.get() is not None:
            return False
        dim = int(given.get("embedding_dim") or given["dim"])
        rows = 2 * train.n_products + (train.n_users if given["use_user_embedding"] else 0)
        evaluations = max(1, int(given["max_epochs"]) // max(1, int(given["eval_every"])))
        needed_mb = rows * dim * 4 * evaluations * n_folds / 2**20
        if needed_mb > CURVE_MEMORY_MB:
            _log.info(
                "auto: the ranker's epoch weights would take %.0f MiB; one epoch search instead",
                needed_mb,
            )
            return False
        return True

    def _curve_scores(
        self,
        deferred: list[dict[str, Any]],
        folds: list[tuple[RatingData, RatingData]],
        contests: list[RatingData],
        weights: list[float],
    ) -> tuple[list[float], list[float] | None]:
        """The ranker's and the blend's contest scores per fold, from the epoch curves.

        The served ranker trains for the epoch count with the best mean NDCG@10 over every
        fold's curve (:func:`recsys.model.ranker.curve_epoch`), so the contest measures that
        rule: fold ``k`` scores its ranker at the epoch count the OTHER folds' mean curve
        picks (no fold chooses its own epochs). The blend chooses its ranker's epoch count and
        its weight the same way: on every fold, the blend of the fold's ranker at each
        evaluated epoch count with the fold's EASE is scored at each weight; the served pair
        is the best mean over the folds and fold ``k`` is scored at the other folds' best.
        Returns (the ranker's score per fold, the blend's per fold or None without EASE).
        """
        from recsys.model.blend import BlendRecommender
        from recsys.model.ranker import mean_curve

        rankers = [d["ranker"] for d in deferred]
        all_curves = [[tuple(p) for p in r.params["curve"]] for r in rankers]
        epochs = sorted(mean_curve(all_curves))
        tables = [{e: v for e, v in c if e in epochs} for c in all_curves]
        served, fold_epochs, scores = leave_one_out(tables, epochs)
        blend_tables: list[dict[tuple[int, float], float]] = []
        for d in deferred:
            if d["ease"] is None:
                continue
            fit_part = folds[d["fold"]][0]
            cells: dict[tuple[int, float], float] = {}
            for e in epochs:
                d["ranker"].use_epoch(e, fit_part)
                _, by_weight = BlendRecommender.choose_weight(
                    d["ranker"], d["ease"], fit_part, contests[d["fold"]], weights
                )
                cells.update({(e, w): by_weight[w] for w in weights})
            blend_tables.append(cells)
        for d in deferred:
            if self.params["ranker_serving"] == "bag":
                d["ranker"].use_epoch(served, folds[d["fold"]][0])
            d["ranker"].drop_snapshots()
        self.members = rankers if self.params["ranker_serving"] == "bag" else []
        self.curve = {
            "epochs": int(served),
            "fold_epochs": fold_epochs,
            "mean_curve": [[e, round(v, 6)] for e, v in mean_curve(all_curves).items()],
            "serving": self.params["ranker_serving"],
        }
        blend_scores = None
        if blend_tables and len(blend_tables) == len(deferred):
            keys = [(e, w) for e in epochs for w in weights]
            (blend_epochs, weight), fold_keys, blend_scores = leave_one_out(blend_tables, keys)
            self.curve.update(
                blend_epochs=int(blend_epochs),
                blend_weight=float(weight),
                blend_fold_choices=[[int(e), float(w)] for e, w in fold_keys],
            )
        _log.info(
            "auto: the ranker's epoch curves pick %d epochs (each fold scored at the others' "
            "pick: %s); the blend's (epochs, weight): %s",
            served,
            fold_epochs,
            (self.curve.get("blend_epochs"), self.curve.get("blend_weight")),
        )
        return scores, blend_scores

    # --- Recommender ----------------------------------------------------------------------

    def fit(
        self,
        train: RatingData,
        *,
        validation: RatingData | None = None,
        seed: int = 0,
        progress: ProgressSink = NO_PROGRESS,
        should_stop: Callable[[], bool] | None = None,
    ) -> FitHistory:
        """Select on the train-internal folds, then refit the winner on all of ``train``.

        Args:
            train: the training ratings.
            validation: unused (the contest uses its own train-internal split).
            seed: seeds every candidate.
            progress: a :mod:`recsys.progress` sink: the ranker's epochs, and one phase per
                other candidate's fit and per contest measurement.
            should_stop: polled by the candidates that take it (the ranker, per batch).
        """
        from recsys.model import catalog
        from recsys.model.blend import BlendRecommender

        if len(train) == 0:
            raise DataError("no training ratings")
        self.curve, self.members, self.als_search = {}, [], {}
        budget = self.params["time_budget_s"]
        if len(train) < self.params["budget_min_ratings"]:
            budget = None
        self.deadline = None if not budget else self.clock() + budget
        names, skipped = self.plan(train)
        n_folds = selection_folds(
            len(train), self.params["selection_ratings"], self.params["max_folds"]
        )
        if self.deadline is not None:
            n_folds = 1  # a budget is for large data: one fold, each candidate fitted once
        folds = internal_folds(train, n_folds)
        contests = [contest_sample(held_out, self.params["contest_users"]) for _, held_out in folds]
        weights = list(catalog.BlendConfig().weights)
        per_fold: dict[str, list[float]] = {}
        seconds: dict[str, float] = {}
        histories: dict[str, FitHistory] = {}
        blend_folds: dict[float, list[float]] = {w: [] for w in weights}
        blend_seconds = 0.0
        failed: set[str] = set()
        ranker_epochs: int | None = None
        first_fitted: dict[str, Any] = {}
        curves = self._use_curves(train, names, n_folds)
        als_over_folds = self._search_als_over_folds(names, n_folds)
        deferred: list[dict[str, Any]] = []  # with curves: each fold's ranker and EASE
        for k, ((fit_part, _), contest) in enumerate(zip(folds, contests, strict=True)):
            fitted: dict[str, Any] = {}
            n_contest = len(np.unique(contest.users))
            for position, name in enumerate(names, 1):
                if name in failed or (name == "als" and als_over_folds):
                    continue
                reason = self.skip_reason(name)
                if reason is not None:
                    _log.info("auto: candidate %s not started: %s", name, reason)
                    skipped.append({"model": name, "reason": reason})
                    failed.add(name)
                    per_fold.pop(name, None)
                    continue
                started = time.perf_counter()
                try:
                    model = self._create(name, contest=True, epochs=ranker_epochs)
                    budget_now = self.candidate_budget(name)  # after the imports of creation
                    if budget_now is not None and "time_budget_s" in getattr(model, "params", {}):
                        model.params["time_budget_s"] = budget_now
                    hooks = _hooks(model, progress, should_stop)
                    fold = f", fold {k + 1}/{n_folds}" if n_folds > 1 else ""
                    if "progress" not in hooks:  # a phase of its own, so the fit is not silent
                        progress.start(
                            f"auto: fit {name} ({position}/{len(names)}{fold})", 1, "fits"
                        )
                    if curves and name == "ranker":
                        # scored after every fold's curve (see _curve_scores)
                        history = model.fit_curve(
                            fit_part, contest, seed=seed, patience=CURVE_PATIENCE, **hooks
                        )
                    else:
                        history = model.fit(fit_part, seed=seed, **hooks)
                    if k == 0:
                        histories[name] = history
                    seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - started
                    if "progress" not in hooks:
                        progress.update(1)
                        progress.finish()
                    if curves and name == "ranker":
                        score = float(max(v for _, v in model.params["curve"]))
                    else:
                        progress.start(f"auto: contest NDCG@10 of {name}{fold}", n_contest, "users")
                        score = internal_ndcg(model, fit_part, contest)
                        progress.update(n_contest, ndcg=score)
                        progress.finish()
                except RecsysError as err:
                    _log.warning("auto: candidate %s failed: %s", name, err)
                    skipped.append({"model": name, "reason": str(err).splitlines()[0][:200]})
                    failed.add(name)
                    per_fold.pop(name, None)
                    continue
                if name == "ranker" and ranker_epochs is None and not curves:
                    ranker_epochs = model.params.get("tuned_epochs") or model.params["epochs"]
                fitted[name] = model
                per_fold.setdefault(name, []).append(score)
                _log.info("auto: fold %d/%d %s internal NDCG@10 %.4f", k + 1, n_folds, name, score)
            if curves:
                deferred.append(
                    {"ranker": fitted.get("ranker"), "ease": fitted.get("ease"), "fold": k}
                )
            elif "ranker" in fitted and "ease" in fitted:
                started = time.perf_counter()
                _, by_weight = BlendRecommender.choose_weight(
                    fitted["ranker"], fitted["ease"], fit_part, contest, weights
                )
                blend_seconds += time.perf_counter() - started
                for w in weights:
                    blend_folds[w].append(by_weight[w])
            if k == 0:
                first_fitted = fitted
            del fitted
        if als_over_folds:
            started = time.perf_counter()
            try:
                per_fold["als"] = self._als_fold_scores(folds, contests, seed, progress)
            except RecsysError as err:
                _log.warning("auto: candidate als failed: %s", err)
                skipped.append({"model": "als", "reason": str(err).splitlines()[0][:200]})
                failed.add("als")
            seconds["als"] = time.perf_counter() - started
        blend_curve: list[float] | None = None
        if curves and "ranker" in per_fold and "ranker" not in failed:
            started = time.perf_counter()
            per_fold["ranker"], blend_curve = self._curve_scores(deferred, folds, contests, weights)
            blend_seconds += time.perf_counter() - started
        deferred.clear()
        fit_part = folds[0][0]
        results: list[dict[str, Any]] = [
            {
                "model": name,
                "ndcg@10": float(np.mean(per_fold[name])),
                "fit_seconds": round(seconds[name], 3),
                "folds": [round(float(v), 6) for v in per_fold[name]],
            }
            for name in names
            if name in per_fold and name not in failed
        ]
        blend_weight = None
        both = {"ranker", "ease"} <= set(per_fold) and not {"ranker", "ease"} & failed
        if both and blend_curve is not None:
            blend_weight = self.curve["blend_weight"]
            results.append(
                {
                    "model": BLEND,
                    "ndcg@10": float(np.mean(blend_curve)),
                    "fit_seconds": round(seconds["ranker"] + seconds["ease"] + blend_seconds, 3),
                    "weight": blend_weight,
                    "epochs": self.curve["blend_epochs"],
                    "folds": [round(float(v), 6) for v in blend_curve],
                }
            )
        elif both and all(len(v) == n_folds for v in blend_folds.values()):
            mean_by_weight = {w: float(np.mean(v)) for w, v in blend_folds.items()}
            blend_weight = max(weights, key=lambda w: mean_by_weight[w])
            results.append(
                {
                    "model": BLEND,
                    "ndcg@10": mean_by_weight[blend_weight],
                    "fit_seconds": round(seconds["ranker"] + seconds["ease"] + blend_seconds, 3),
                    "weight": blend_weight,
                    "folds": [round(float(v), 6) for v in blend_folds[blend_weight]],
                }
            )
            _log.info("auto: blend NDCG@10 per ranker weight %s", mean_by_weight)
        if not results:
            raise DataError(
                "auto: no candidate model could be trained ("
                + "; ".join(f"{s['model']}: {s['reason']}" for s in skipped)
                + ")"
            )
        best = one_standard_error(results)
        self.chosen_name = best["model"]
        if self.chosen_name == BLEND:
            self.chosen_params = {
                "weight": blend_weight,
                "ranker": self.params["params"].get("ranker", {}),
                "ease": {
                    "memory_mb": self.params["ease_memory_mb"],
                    **self.params["params"].get("ease", {}),
                },
            }
        else:
            self.chosen_params = dict(self.params["params"].get(self.chosen_name, {}))
            if self.chosen_name == "ease":
                self.chosen_params.setdefault("memory_mb", self.params["ease_memory_mb"])
            if self.chosen_name == "als" and self.als_search:
                factors, regularization, alpha = self.als_search["setting"]
                self.chosen_params.update(
                    factors=factors, regularization=regularization, alpha=alpha
                )
        if self.curve:  # the served ranker trains as the contest measured it
            if self.chosen_name == "ranker":
                self.chosen_params["epochs"] = self.curve["epochs"]
            elif self.chosen_name == BLEND:
                self.chosen_params["ranker"] = {
                    **self.chosen_params["ranker"],
                    "epochs": self.curve["blend_epochs"],
                }
        popularity = next((r["ndcg@10"] for r in results if r["model"] == POPULARITY), None)
        if popularity is None:
            values = []
            for (fit_fold, _), contest in zip(folds, contests, strict=True):
                pop = catalog.create(POPULARITY)
                pop.fit(fit_fold, seed=seed)
                values.append(internal_ndcg(pop, fit_fold, contest))
            popularity = float(np.mean(values))
        self.selection = {
            "chosen": self.chosen_name,
            "candidates": results,
            "skipped": skipped,
            "seed": INTERNAL_SEED,
            "contest_users": int(len(np.unique(contests[0].users))),
            "folds": n_folds,
        }
        if self.curve:
            self.selection["ranker_epochs"] = self.curve
        if self.als_search:
            self.selection["als_search"] = self.als_search
        self.internal = {
            "ndcg@10": float(best["ndcg@10"]),
            "popularity_ndcg@10": float(popularity),
            "seed": INTERNAL_SEED,
        }
        _log.info(
            "auto: chose %s (internal NDCG@10 %.4f over %d folds) among %s",
            self.chosen_name,
            best["ndcg@10"],
            n_folds,
            ", ".join(f"{r['model']} {r['ndcg@10']:.4f}" for r in results),
        )
        per_fit = {name: value / n_folds for name, value in seconds.items()}
        history = self._serve(
            train, fit_part, first_fitted, per_fit, histories, seed, progress, stop=should_stop
        )
        if self.deadline is not None:
            self.selection["budget"] = {
                "seconds": budget,
                "used": round(budget - self.left(), 1),
                "final": self.final,
            }
        return history

    def _rating_head(self, wanted: Any) -> bool:
        """Whether a ranker served from the contest trains its rating head (see the module)."""
        left = self.left()
        if not wanted or left is None or left >= MIN_RATING_HEAD_S:
            return bool(wanted)
        _log.info("auto: time budget: %.0f s left; the served ranker has no rating head", left)
        self.selection.setdefault("skipped", []).append(
            {"model": "ranker rating head", "reason": f"time budget: {max(left, 0):.0f} s left"}
        )
        return False

    def _serve(
        self,
        train: RatingData,
        fit_part: RatingData,
        fitted: dict[str, Any],
        seconds: dict[str, float],
        histories: dict[str, FitHistory],
        seed: int,
        progress: ProgressSink,
        *,
        stop: Callable[[], bool] | None,
    ) -> FitHistory:
        """The served model from the winner: a refit on all of ``train`` when the budget allows,
        else the contest fit extended to all the users' ratings, else a refit with the
        winner's tuned hyper-parameters fixed (see the module docstring)."""
        from recsys.model import catalog

        name = self.chosen_name
        left = self.left()
        spent = seconds.get(name)
        if name == BLEND:
            spent = seconds.get("ranker", 0.0) + seconds.get("ease", 0.0)
        projected = (spent or 0.0) * len(train) / max(len(fit_part), 1)
        params = dict(self.chosen_params)
        if self.members and name in ("ranker", BLEND):
            return self._serve_bag(train, params, seed, progress, stop)
        if left is None or projected <= left:
            self.final = "refit"
            _log.info("auto: refitting %s on all %d ratings", name, len(train))
            if left is not None and name == "ranker":
                params["time_budget_s"] = max(left, 1.0)
            self.chosen = catalog.create(name, **params)
            return self.chosen.fit(train, seed=seed, **_hooks(self.chosen, progress, stop))
        if name == BLEND:
            from recsys.model.blend import BlendRecommender

            self.final = "extended"
            _log.info(
                "auto: time budget: %.0f s left, a refit of the blend would take about %.0f s; "
                "serving its contest ranker with users pooled from all %d ratings and EASE "
                "refitted with its contest lambda",
                left,
                projected,
                len(train),
            )
            ranker, ease = fitted["ranker"], fitted["ease"]
            wanted = params.get("ranker", {}).get("rating_head", catalog.RankerConfig().rating_head)
            ranker.extend(
                train,
                seed=seed,
                rating_head=self._rating_head(wanted),
                deadline=self.deadline,
                **_hooks(ranker, progress, stop),
            )
            ease_params = dict(params.get("ease", {}))
            if ease.params.get("tuned_lam") is not None:
                ease_params["lam"] = ease.params["tuned_lam"]
            refitted = catalog.create("ease", **ease_params)
            refitted.fit(train, seed=seed)
            self.chosen = BlendRecommender.from_parts(ranker, refitted, float(params["weight"]))
            history = histories["ranker"]
            return replace(
                history,
                stopped_reason=f"{history.stopped_reason}; blend served from auto's contest",
            )
        model = fitted.get(name)
        if model is not None and hasattr(model, "extend"):
            self.final = "extended"
            _log.info(
                "auto: time budget: %.0f s left, a refit of %s would take about %.0f s; serving "
                "the contest fit with its users pooled from all %d ratings",
                left,
                name,
                projected,
                len(train),
            )
            wanted = params.get("rating_head", catalog.RankerConfig().rating_head)
            model.extend(
                train,
                seed=seed,
                rating_head=self._rating_head(wanted),
                deadline=self.deadline,
                **_hooks(model, progress, stop),
            )
            self.chosen = model
            history = histories[name]
            return replace(
                history,
                stopped_reason=f"{history.stopped_reason}; served as fitted in auto's contest",
            )
        self.final = "refit with tuned parameters"
        tuned = getattr(fitted.get(name), "params", {}) or {}
        if name == "als" and tuned.get("tuned"):
            factors, regularization, alpha = tuned["tuned"]
            params.update(factors=factors, regularization=regularization, alpha=alpha)
        elif name == "ease" and tuned.get("tuned_lam") is not None:
            params["lam"] = tuned["tuned_lam"]
        _log.info(
            "auto: time budget: %.0f s left; refitting %s with its contest parameters %s",
            left,
            name,
            params,
        )
        self.chosen = catalog.create(name, **params)
        return self.chosen.fit(train, seed=seed, **_hooks(self.chosen, progress, stop))

    def _serve_bag(
        self,
        train: RatingData,
        params: dict[str, Any],
        seed: int,
        progress: ProgressSink,
        stop: Callable[[], bool] | None,
    ) -> FitHistory:
        """The ranker (or the blend's ranker) served as the mean of the folds' rankers."""
        from recsys.model import catalog
        from recsys.model.ranker import RankerRecommender

        ranker_params = params.get("ranker", {}) if self.chosen_name == BLEND else params
        wanted = ranker_params.get("rating_head", catalog.RankerConfig().rating_head)
        if self.chosen_name == BLEND:
            wanted = False  # the blend predicts no ratings
        self.final = "bagged"
        _log.info(
            "auto: serving the mean of the %d folds' rankers at %d epochs, users pooled from "
            "all %d ratings",
            len(self.members),
            self.curve["epochs"],
            len(train),
        )
        ranker = RankerRecommender.bagged(
            self.members,
            train,
            seed=seed,
            rating_head=bool(wanted),
            progress=progress,
            should_stop=stop,
        )
        self.members = []
        reason = f"mean of {ranker.params['bagged']} fold rankers, {self.curve['epochs']} epochs"
        if self.chosen_name == BLEND:
            from recsys.model.blend import BlendRecommender

            ease = catalog.create("ease", **params.get("ease", {}))
            ease.fit(train, seed=seed)
            self.chosen = BlendRecommender.from_parts(ranker, ease, float(params["weight"]))
            reason += f"; blend weight {params['weight']:g}"
        else:
            self.chosen = ranker
        return FitHistory(
            train_loss=[], best_epoch=int(self.curve["epochs"]), stopped_reason=reason
        )

    def _check(self) -> Any:
        if self.chosen is None:
            raise RecsysError("auto has not selected a model yet (fit first)")
        return self.chosen

    @property
    def predicts_ratings(self) -> bool:
        """The chosen model's (False before the selection: nothing to predict with)."""
        return self.chosen is not None and bool(getattr(self.chosen, "predicts_ratings", True))

    def predict(self, users: np.ndarray, products: np.ndarray) -> np.ndarray:
        return self._check().predict(users, products)

    def score_users(self, users: np.ndarray) -> np.ndarray:
        return self._check().score_users(users)

    def save(self, directory: Path) -> None:
        """Saves the chosen model (it loads back as that model)."""
        self._check().save(directory)
