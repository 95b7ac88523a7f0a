"""The catalogue of models: name -> factory, and loading a saved model by the name it recorded.

Every entry implements :class:`recsys.model.base.Recommender`. Other areas add their models
with :func:`register` (engineer E: ``ranker`` and the evaluation peers) and may change
``DEFAULT_NIGHTLY_MODEL``. Factories import TensorFlow lazily (only Keras models need it).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from recsys.errors import RecsysError
from recsys.model.base import META_FILE, Recommender

DEFAULT_NIGHTLY_MODEL = "ranker"
"""The ranking hybrid (issue 6): best measured top-10 lists (benchmarks/RESULTS.md, Ranking
quality); the notebook models stay available by name."""
"""Every saved model writes this JSON with at least ``{"model": name}``."""


def _keras(kind: str) -> Callable[..., Recommender]:
    def factory(**params: Any) -> Recommender:
        from recsys.model.keras_models import KerasRecommender

        return KerasRecommender(kind, **params)

    return factory


def _keras_load(directory: Path) -> Recommender:
    from recsys.model.keras_models import KerasRecommender

    return KerasRecommender.load(directory)


def _bias(**params: Any) -> Recommender:
    from recsys.model.baselines import BiasRecommender

    return BiasRecommender(**params)


def _bias_load(directory: Path) -> Recommender:
    from recsys.model.baselines import BiasRecommender

    return BiasRecommender.load(directory)


def _popularity(**params: Any) -> Recommender:
    from recsys.model.baselines import PopularityRecommender

    return PopularityRecommender(**params)


def _popularity_load(directory: Path) -> Recommender:
    from recsys.model.baselines import PopularityRecommender

    return PopularityRecommender.load(directory)


MODELS: dict[str, Callable[..., Recommender]] = {
    "hybrid": _keras("hybrid"),
    "deep": _keras("deep"),
    "mf": _keras("mf"),
    "bias": _bias,
    "popularity": _popularity,
}
"""name -> factory(**params) returning an untrained Recommender."""

LOADERS: dict[str, Callable[[Path], Recommender]] = {
    "hybrid": _keras_load,
    "deep": _keras_load,
    "mf": _keras_load,
    "bias": _bias_load,
    "popularity": _popularity_load,
}
"""name -> loader(directory) for a model saved by ``Recommender.save``."""

NEEDS_TEXT: set[str] = {"hybrid"}
"""Models that need product text vectors (a current feature set)."""

KERAS_PARAMS = ("epochs", "batch_size", "learning_rate", "embedding_dim", "hidden_units")
"""Options of ``recsys train``/``evaluate`` that only the Keras models take."""

ACCEPTS: dict[str, tuple[str, ...]] = {
    "hybrid": KERAS_PARAMS,
    "deep": KERAS_PARAMS,
    "mf": KERAS_PARAMS,
    "bias": (),
    "popularity": (),
}
"""Which of the shared CLI options (epochs, batch size, ...) each model takes; a model missing
here gets all of them."""


def model_params(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """The CLI ``options`` (None = not given) that model ``name`` takes."""
    given = {k: v for k, v in options.items() if v is not None}
    if name not in ACCEPTS:
        return given
    return {k: v for k, v in given.items() if k in ACCEPTS[name]}


def register(
    name: str,
    factory: Callable[..., Recommender],
    loader: Callable[[Path], Recommender],
    *,
    needs_text: bool = False,
    accepts: tuple[str, ...] | None = None,
) -> None:
    """Add a model to the catalogue (its ``save`` must write META_FILE with ``model: name``)."""
    MODELS[name] = factory
    LOADERS[name] = loader
    if accepts is not None:
        ACCEPTS[name] = tuple(accepts)
    if needs_text:
        NEEDS_TEXT.add(name)


def create(name: str, **params: Any) -> Recommender:
    """An untrained model by name; unknown names raise RecsysError listing the known ones."""
    if name not in MODELS:
        raise RecsysError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}")
    try:
        return MODELS[name](**params)
    except TypeError as err:
        raise RecsysError(f"bad parameters for model {name!r}: {err}") from err


def load(directory: Path) -> Recommender:
    """Load a saved model, dispatching on the name in its ``recommender.json``."""
    directory = Path(directory)
    meta_path = directory / META_FILE
    if not meta_path.exists():
        raise RecsysError(f"no saved model in {directory} ({META_FILE} missing)")
    name = json.loads(meta_path.read_text()).get("model")
    if name not in LOADERS:
        raise RecsysError(f"saved model {name!r} in {directory} is not in the catalogue")
    return LOADERS[name](directory)


# --- engineer E (issue 6): the ranking hybrid and the evaluation peers -----------------------


def _ranker(**params: Any) -> Recommender:
    from recsys.model.ranker import RankerRecommender

    return RankerRecommender(**params)


def _ranker_load(directory: Path) -> Recommender:
    from recsys.model.ranker import RankerRecommender

    return RankerRecommender.load(directory)


def _peer(kind: str) -> tuple[Callable[..., Recommender], Callable[[Path], Recommender]]:
    def classes():
        from recsys.evaluation import peers

        return {
            "ease": peers.EASEPeer,
            "als": peers.ALSPeer,
            "lightfm": peers.LightFMPeer,
            "lightfm_text": peers.LightFMPeer,
        }[kind]

    def factory(**params: Any) -> Recommender:
        if kind == "lightfm_text":
            params = {**params, "text": True}
        return classes()(**params)

    def loader(directory: Path) -> Recommender:
        return classes().load(directory)

    return factory, loader


register(
    "ranker",
    _ranker,
    _ranker_load,
    needs_text=True,
    accepts=("epochs", "embedding_dim", "learning_rate"),
)
for _name in ("ease", "als", "lightfm", "lightfm_text"):
    register(_name, *_peer(_name), needs_text=_name == "lightfm_text", accepts=())
