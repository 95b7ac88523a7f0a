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
   split of a fold's fitting part, never on a held-out part (the ranker tunes its epochs on
   the first fold and reuses that count on later folds, and trains no rating head in the
   contest: ranking never reads it); the blend's weight is the one with the best mean NDCG@10
   over the folds from the fold's fitted ranker and EASE (its pure ends are the two
   candidates themselves), so the blend wins only where a mix beats both.
3. The winner (highest mean; ties: the first in catalogue order) is refitted on all the
   training data; that is the model that is saved and served (its own ``recommender.json``).

``selection`` holds every candidate's mean internal NDCG@10, its per-fold values and fit
seconds summed over the folds (stored as ``model_runs.metrics["auto"]``, with ``folds``),
``internal`` the winner's and popularity's mean internal NDCG@10
(``model_runs.metrics["internal"]``). Test data is never seen: the protocol's test part is cut
before training reads anything.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from recsys.errors import DataError, RecsysError
from recsys.model.base import FitHistory, RatingData

_log = logging.getLogger(__name__)
INTERNAL_SEED = 4242
"""The seed of the train-internal split (the ranker's epoch-tuning split)."""
BLEND = "blend"
POPULARITY = "popularity"
DEFAULT_SELECTION_RATINGS = 250_000
"""The contest's fitting budget per candidate, in ratings (:func:`selection_folds`)."""
DEFAULT_MAX_FOLDS = 5
"""The most internal folds of the contest."""
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


def internal_ndcg(model: Any, fit_part: RatingData, held_out: RatingData) -> float:
    """NDCG@10 of a model fitted on ``fit_part`` on the held-out part."""
    from recsys.evaluation.tuning import validation_ndcg

    return float(validation_ndcg(model, fit_part, held_out))


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


class AutoRecommender:
    """Selects and wraps the served model (see the module docstring).

    Args:
        candidates: model names to try (None: the catalogue's auto candidates).
        ease_memory_mb: EASE's memory budget; larger catalogues leave EASE (and blend) out.
        params: per-candidate parameters, by model name.
        selection_ratings: the contest's fitting budget in ratings per candidate; it sets the
            number of internal folds (:func:`selection_folds`).
        max_folds: the most internal folds the contest uses.
    """

    name = "auto"

    def __init__(
        self,
        *,
        candidates: tuple[str, ...] | list[str] | None = None,
        ease_memory_mb: int = 4096,
        params: dict[str, dict[str, Any]] | None = None,
        selection_ratings: int = DEFAULT_SELECTION_RATINGS,
        max_folds: int = DEFAULT_MAX_FOLDS,
    ) -> None:
        self.params: dict[str, Any] = {
            "candidates": None if candidates is None else list(candidates),
            "ease_memory_mb": int(ease_memory_mb),
            "params": {k: dict(v) for k, v in (params or {}).items()},
            "selection_ratings": int(selection_ratings),
            "max_folds": int(max_folds),
        }
        self.chosen: Any = None
        self.chosen_name: str | None = None
        self.chosen_params: dict[str, Any] = {}
        self.selection: dict[str, Any] = {}
        self.internal: dict[str, Any] = {}

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

    def _create(self, name: str, *, selecting: bool = False, epochs: int | None = None) -> Any:
        """A candidate; ``selecting``: the contest's variant (see :meth:`fit`).

        In the contest the ranker trains without its rating head (``score_users`` never reads
        it) and, once the first fold has tuned its epochs, later folds reuse that count.
        """
        from recsys.model import catalog

        params = dict(self.params["params"].get(name, {}))
        if name == "ease":
            params.setdefault("memory_mb", self.params["ease_memory_mb"])
        if selecting and name == "ranker":
            params["rating_head"] = False
            if epochs is not None and params.get("epochs") is None:
                params["epochs"] = int(epochs)
        return catalog.create(name, **params)

    # --- Recommender ----------------------------------------------------------------------

    def fit(
        self, train: RatingData, *, validation: RatingData | None = None, seed: int = 0
    ) -> FitHistory:
        """Select on the train-internal folds, then refit the winner on all of ``train``."""
        from recsys.model import catalog
        from recsys.model.blend import BlendRecommender

        if len(train) == 0:
            raise DataError("no training ratings")
        names, skipped = self.plan(train)
        n_folds = selection_folds(
            len(train), self.params["selection_ratings"], self.params["max_folds"]
        )
        folds = internal_folds(train, n_folds)
        weights = list(catalog.BlendConfig().weights)
        per_fold: dict[str, list[float]] = {}
        seconds: dict[str, float] = {}
        blend_folds: dict[float, list[float]] = {w: [] for w in weights}
        blend_seconds = 0.0
        failed: set[str] = set()
        ranker_epochs: int | None = None
        for k, (fit_part, held_out) in enumerate(folds):
            fitted: dict[str, Any] = {}
            for name in names:
                if name in failed:
                    continue
                started = time.perf_counter()
                try:
                    model = self._create(name, selecting=True, epochs=ranker_epochs)
                    model.fit(fit_part, seed=seed)
                    seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - started
                    score = internal_ndcg(model, fit_part, held_out)
                except RecsysError as err:
                    _log.warning("auto: candidate %s failed: %s", name, err)
                    skipped.append({"model": name, "reason": str(err).splitlines()[0][:200]})
                    failed.add(name)
                    per_fold.pop(name, None)
                    continue
                if name == "ranker" and ranker_epochs is None:
                    ranker_epochs = model.params.get("tuned_epochs") or model.params["epochs"]
                fitted[name] = model
                per_fold.setdefault(name, []).append(score)
                _log.info("auto: fold %d/%d %s internal NDCG@10 %.4f", k + 1, n_folds, name, score)
            if "ranker" in fitted and "ease" in fitted:
                started = time.perf_counter()
                _, by_weight = BlendRecommender.choose_weight(
                    fitted["ranker"], fitted["ease"], fit_part, held_out, weights
                )
                blend_seconds += time.perf_counter() - started
                for w in weights:
                    blend_folds[w].append(by_weight[w])
            del fitted
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
        if both and all(len(v) == n_folds for v in blend_folds.values()):
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
        order = {n: i for i, n in enumerate(catalog.SPECS)}
        best = max(results, key=lambda r: (r["ndcg@10"], -order.get(r["model"], 99)))
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
        popularity = next((r["ndcg@10"] for r in results if r["model"] == POPULARITY), None)
        if popularity is None:
            values = []
            for fit_part, held_out in folds:
                pop = catalog.create(POPULARITY)
                pop.fit(fit_part, seed=seed)
                values.append(internal_ndcg(pop, fit_part, held_out))
            popularity = float(np.mean(values))
        self.selection = {
            "chosen": self.chosen_name,
            "candidates": results,
            "skipped": skipped,
            "seed": INTERNAL_SEED,
            "folds": n_folds,
        }
        self.internal = {
            "ndcg@10": float(best["ndcg@10"]),
            "popularity_ndcg@10": float(popularity),
            "seed": INTERNAL_SEED,
        }
        _log.info(
            "auto: chose %s (internal NDCG@10 %.4f over %d folds) among %s; "
            "refitting on all %d ratings",
            self.chosen_name,
            best["ndcg@10"],
            n_folds,
            ", ".join(f"{r['model']} {r['ndcg@10']:.4f}" for r in results),
            len(train),
        )
        self.chosen = catalog.create(self.chosen_name, **self.chosen_params)
        history = self.chosen.fit(train, seed=seed)
        return history

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
