"""``--model auto``: train the candidates that fit the data, serve the best one.

1. Candidates: every catalogue spec marked ``auto_candidate`` whose needs the data meets
   (``ranker``; ``ease`` while the catalogue's dense Gram matrix fits ``ease_memory_mb``, see
   :func:`recsys.model.ease.ease_max_products`; ``als`` when ``implicit`` is installed, the
   ``peers`` extra; ``popularity``), plus ``blend`` (ranker + EASE) when both ran.
2. Each is fitted on the TRAIN-INTERNAL split's fitting part (:func:`internal_split`: 20% of
   each user's training ratings held out with seed 4242, the split the ranker tunes its epochs
   on) and scored by NDCG@10 on the held-out part. Each candidate tunes its own
   hyper-parameters on a split of that fitting part, never on the held-out part; the blend's
   weight is chosen on the held-out part from the fitted ranker and EASE (its pure ends are the
   two candidates themselves), so the blend wins only where a mix beats both.
3. The winner (ties: the first in catalogue order) is refitted on all the training data; that
   is the model that is saved and served (its own ``recommender.json``).

``selection`` holds every candidate's internal NDCG@10 and fit seconds (stored as
``model_runs.metrics["auto"]``), ``internal`` the winner's and popularity's internal NDCG@10
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


def internal_split(train: RatingData) -> tuple[RatingData, RatingData]:
    """(fitting part, held-out part): the train-internal split, relevance made explicit.

    On implicit data (under 10% of ratings >= 4) every held-out rating counts as relevant, as
    the ranker treats its targets there.
    """
    from recsys.evaluation.tuning import internal_rank_split

    fit_part, held_out = internal_rank_split(train, seed=INTERNAL_SEED)
    if len(train) and np.mean(train.ratings >= 4) < 0.1:
        held_out = replace(held_out, ratings=np.full(len(held_out), 5.0, dtype=np.float32))
    return fit_part, held_out


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
    """

    name = "auto"

    def __init__(
        self,
        *,
        candidates: tuple[str, ...] | list[str] | None = None,
        ease_memory_mb: int = 4096,
        params: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        self.params: dict[str, Any] = {
            "candidates": None if candidates is None else list(candidates),
            "ease_memory_mb": int(ease_memory_mb),
            "params": {k: dict(v) for k, v in (params or {}).items()},
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

    def _create(self, name: str) -> Any:
        from recsys.model import catalog

        params = dict(self.params["params"].get(name, {}))
        if name == "ease":
            params.setdefault("memory_mb", self.params["ease_memory_mb"])
        return catalog.create(name, **params)

    # --- Recommender ----------------------------------------------------------------------

    def fit(
        self, train: RatingData, *, validation: RatingData | None = None, seed: int = 0
    ) -> FitHistory:
        """Select on the train-internal split, then refit the winner on all of ``train``."""
        from recsys.model import catalog
        from recsys.model.blend import BlendRecommender

        if len(train) == 0:
            raise DataError("no training ratings")
        names, skipped = self.plan(train)
        fit_part, held_out = internal_split(train)
        fitted: dict[str, Any] = {}
        results: list[dict[str, Any]] = []
        seconds: dict[str, float] = {}
        for name in names:
            started = time.perf_counter()
            try:
                model = self._create(name)
                model.fit(fit_part, seed=seed)
                seconds[name] = time.perf_counter() - started
                score = internal_ndcg(model, fit_part, held_out)
            except RecsysError as err:
                _log.warning("auto: candidate %s failed: %s", name, err)
                skipped.append({"model": name, "reason": str(err).splitlines()[0][:200]})
                continue
            fitted[name] = model
            results.append(
                {"model": name, "ndcg@10": score, "fit_seconds": round(seconds[name], 3)}
            )
            _log.info("auto: %s internal NDCG@10 %.4f (%.1f s)", name, score, seconds[name])
        blend_weight = None
        if "ranker" in fitted and "ease" in fitted:
            started = time.perf_counter()
            weights = list(catalog.BlendConfig().weights)
            blend_weight, by_weight = BlendRecommender.choose_weight(
                fitted["ranker"], fitted["ease"], fit_part, held_out, weights
            )
            spent = seconds["ranker"] + seconds["ease"] + time.perf_counter() - started
            results.append(
                {
                    "model": BLEND,
                    "ndcg@10": by_weight[blend_weight],
                    "fit_seconds": round(spent, 3),
                    "weight": blend_weight,
                }
            )
            _log.info("auto: blend NDCG@10 per ranker weight %s", by_weight)
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
            pop = catalog.create(POPULARITY)
            pop.fit(fit_part, seed=seed)
            popularity = internal_ndcg(pop, fit_part, held_out)
        self.selection = {
            "chosen": self.chosen_name,
            "candidates": results,
            "skipped": skipped,
            "seed": INTERNAL_SEED,
        }
        self.internal = {
            "ndcg@10": float(best["ndcg@10"]),
            "popularity_ndcg@10": float(popularity),
            "seed": INTERNAL_SEED,
        }
        _log.info(
            "auto: chose %s (internal NDCG@10 %.4f) among %s; refitting on all %d ratings",
            self.chosen_name,
            best["ndcg@10"],
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
