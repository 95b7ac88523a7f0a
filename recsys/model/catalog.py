"""The typed model registry: one :class:`ModelSpec` per model, read by the CLI, training and
the registry.

A spec names the model, the class that implements it (imported lazily, so ``--help`` never
loads TensorFlow), a pydantic config whose fields and defaults are the model's parameters,
and what the model needs: ``needs_text`` (cannot train without product text vectors),
``uses_text`` (reads them when a current feature set exists, trains on ids alone otherwise),
``scores_are_ratings`` (its ranking score is its predicted rating; the nightly gate checks
``score_users`` against ``predict``) and ``auto_candidate`` (``--model auto`` may pick it).
``create`` validates parameters through the config (unknown names and bad types fail with one
line) and builds the model with the config's full set of values; ``load`` dispatches a saved
model on the ``model`` name in its ``recommender.json``.

``auto`` (:data:`AUTO`, the nightly default) is not a model of its own: it trains the
candidates that fit the data, scores them on a train-internal split and serves the winner
(:mod:`recsys.model.auto`); the saved model is the winner's.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from recsys.errors import RecsysError
from recsys.model.base import META_FILE, Recommender

AUTO = "auto"
"""The selecting model name (see the module docstring)."""
DEFAULT_NIGHTLY_MODEL = AUTO
"""What ``recsys run`` / ``recsys train`` train when no ``--model`` is given."""
"""Every saved model writes this JSON with at least ``{"model": name}``."""
EVALUATE_DEFAULT = ("hybrid", "deep", "mf", "bias", "popularity")
"""What ``recsys evaluate`` compares when no ``--models`` is given (the notebook's models)."""
KERAS_PARAMS = ("epochs", "batch_size", "learning_rate", "embedding_dim", "hidden_units")
"""The shared options of ``recsys train``/``evaluate`` (each model takes those it declares)."""


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class KerasConfig(_Config):
    """The notebook's Keras models (None: the notebook's per-kind default)."""

    epochs: int = 20
    batch_size: int = 1024
    learning_rate: float | None = None
    momentum: float | None = None
    embedding_dim: int | None = None
    hidden_units: int = 1024
    dropout: float = 0.2
    patience: int = 6
    validation_share: float = 0.1
    block_bytes: int = 64 << 20


class BiasConfig(_Config):
    reg_user: float = 15.0
    reg_product: float = 10.0
    iterations: int = 10


class EmptyConfig(_Config):
    """A model without parameters."""


class RankerConfig(_Config):
    """The ranking hybrid (see :class:`recsys.model.ranker.RankerRecommender`)."""

    dim: int = 200
    epochs: int | None = None
    max_epochs: int = 120
    eval_every: int = 5
    patience: int = 3
    batch_users: int = 64
    learning_rate: float = 0.002
    weight_decay: float = 0.01
    input_dropout: float = 0.5
    id_dropout: float = 0.1
    use_user_embedding: bool = False
    full_softmax_max: int = 5_000
    sampled_negatives: int = 1000
    rating_head: bool = True
    rating_epochs: int = 30
    rating_batch: int = 512
    rating_dim: int = 32
    weight_average: float = 0.99
    target_min_rating: float | None = 4.0
    rating_hidden: int = 64
    rating_tower: bool = True
    rating_l2: float = 1e-5
    rating_learning_rate: float = 1e-3
    validation_users: int = 3_000
    time_budget_s: float | None = None
    epoch_folds: int = 1
    embedding_dim: int | None = None


class EASEConfig(_Config):
    lam: float | None = None
    lambdas: tuple[float, ...] = (50.0, 100.0, 200.0, 400.0, 800.0, 1600.0)
    memory_mb: int = 4096


class ALSConfig(_Config):
    factors: int | None = None
    regularization: float | None = None
    alpha: float | None = None
    iterations: int = 15
    grid: tuple[tuple[int, float, float], ...] | None = None
    """Settings tried instead of the staged search of :mod:`recsys.model.als` (None: search)."""
    time_budget_s: float | None = None


class LightFMConfig(_Config):
    components: int = 64
    epochs: int | None = None
    epoch_grid: tuple[int, ...] = (10, 20, 40)
    learning_rate: float = 0.05


class BlendConfig(_Config):
    """Ranker and EASE, per-user standardised scores mixed with ``weight`` on the ranker."""

    weight: float | None = None
    weights: tuple[float, ...] = (0.2, 0.35, 0.5, 0.65, 0.8)
    ranker: dict[str, Any] = {}
    ease: dict[str, Any] = {}


class AutoConfig(_Config):
    """``--model auto``: which candidates, and EASE's memory budget."""

    candidates: tuple[str, ...] | None = None
    """None: every spec with ``auto_candidate`` whose requirements the data meets."""
    ease_memory_mb: int = 4096
    params: dict[str, dict[str, Any]] = {}
    """Per-candidate parameters (by model name)."""
    time_budget_s: float | None = 480.0
    """Wall seconds the whole fit aims to end within (None or 0: none; see recsys.model.auto)."""
    budget_min_ratings: int = 500_000
    """The budget applies from this many training ratings (smaller data: no budget)."""
    contest_users: int = 5_000
    """Held-out users the contest's NDCG@10 is measured on (a seeded sample; 0: all)."""
    selection_ratings: int = 250_000
    """The contest's fitting budget per candidate in ratings: it sets the internal folds."""
    max_folds: int = 5
    """The most internal folds the contest uses."""
    ranker_serving: str = "refit"
    """With epoch curves: "refit" or "bag" (the mean of the folds' rankers; recsys.model.auto)."""


@dataclass(frozen=True)
class ModelSpec:
    """One model of the catalogue (see the module docstring)."""

    name: str
    target: str
    """``module:Class``; the class takes the config's fields as keyword arguments."""
    config: type[BaseModel]
    description: str
    needs_text: bool = False
    uses_text: bool = False
    scores_are_ratings: bool = False
    auto_candidate: bool = False
    fixed: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments always passed (e.g. the Keras kind) that are not config fields."""
    cli_options: tuple[str, ...] | None = None
    """Which shared CLI options (:data:`KERAS_PARAMS`) it takes; None: those that are fields."""
    extra: str | None = None
    """The optional dependency group it needs to train (``pip install 'recsys[extra]'``)."""
    requires_module: str | None = None
    """A module whose presence makes it trainable (checked by :meth:`available`)."""

    def cls(self) -> type:
        module, _, name = self.target.partition(":")
        return getattr(importlib.import_module(module), name)

    def available(self) -> bool:
        """Whether its optional dependency is installed."""
        if self.requires_module is None:
            return True
        import importlib.util

        return importlib.util.find_spec(self.requires_module) is not None

    def validate(self, params: dict[str, Any]) -> dict[str, Any]:
        """The full parameter set (defaults filled in); RecsysError on unknown or bad ones."""
        try:
            return self.config(**params).model_dump()
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ())) or "?"
            raise RecsysError(
                f"bad parameters for model {self.name!r}: {where}: {first.get('msg')}"
            ) from err

    def accepts(self) -> tuple[str, ...]:
        if self.cli_options is not None:
            return self.cli_options
        return tuple(o for o in KERAS_PARAMS if o in self.config.model_fields)


SPECS: dict[str, ModelSpec] = {}
"""name -> spec, in the order models were added (the CLI lists them in this order)."""


def add(spec: ModelSpec) -> None:
    """Add (or replace) a model in the catalogue."""
    SPECS[spec.name] = spec


for _spec in (
    ModelSpec(
        AUTO,
        "recsys.model.auto:AutoRecommender",
        AutoConfig,
        "train the candidates that fit the data, serve the best on a train-internal split",
        uses_text=True,
        cli_options=(),
    ),
    ModelSpec(
        "ranker",
        "recsys.model.ranker:RankerRecommender",
        RankerConfig,
        "two-tower ranking hybrid (ids + product text when there is any) with a rating head",
        uses_text=True,
        auto_candidate=True,
    ),
    ModelSpec(
        "ease",
        "recsys.model.ease:EASERecommender",
        EASEConfig,
        "EASE item-item closed form (dense products x products matrix)",
        auto_candidate=True,
        cli_options=(),
    ),
    ModelSpec(
        "als",
        "recsys.model.als:ALSRecommender",
        ALSConfig,
        "implicit ALS (pip install 'recsys[peers]')",
        auto_candidate=True,
        cli_options=(),
        extra="peers",
        requires_module="implicit",
    ),
    ModelSpec(
        "blend",
        "recsys.model.blend:BlendRecommender",
        BlendConfig,
        "ranker and EASE scores mixed with a weight chosen on a train-internal split",
        uses_text=True,
        cli_options=(),
    ),
    ModelSpec(
        "popularity",
        "recsys.model.baselines:PopularityRecommender",
        EmptyConfig,
        "most rated products",
        auto_candidate=True,
    ),
    ModelSpec(
        "bias",
        "recsys.model.baselines:BiasRecommender",
        BiasConfig,
        "global mean + user and product biases",
        scores_are_ratings=True,
    ),
    ModelSpec(
        "hybrid",
        "recsys.model.keras_models:KerasRecommender",
        KerasConfig,
        "the notebook's hybrid (needs product text)",
        needs_text=True,
        uses_text=True,
        scores_are_ratings=True,
        fixed={"kind": "hybrid"},
    ),
    ModelSpec(
        "deep",
        "recsys.model.keras_models:KerasRecommender",
        KerasConfig,
        "the notebook's deep model",
        scores_are_ratings=True,
        fixed={"kind": "deep"},
    ),
    ModelSpec(
        "mf",
        "recsys.model.keras_models:KerasRecommender",
        KerasConfig,
        "the notebook's matrix factorisation",
        scores_are_ratings=True,
        fixed={"kind": "mf"},
    ),
    ModelSpec(
        "lightfm",
        "recsys.model.lightfm:LightFMPeer",
        LightFMConfig,
        "LightFM WARP (evaluation peer; pip install 'recsys[peers]')",
        cli_options=(),
        extra="peers",
        requires_module="lightfm",
    ),
    ModelSpec(
        "lightfm_text",
        "recsys.model.lightfm:LightFMPeer",
        LightFMConfig,
        "LightFM WARP with product text features (evaluation peer)",
        needs_text=True,
        uses_text=True,
        cli_options=(),
        fixed={"text": True},
        extra="peers",
        requires_module="lightfm",
    ),
):
    add(_spec)


def spec(name: str) -> ModelSpec:
    """The spec of ``name``; RecsysError listing the known names otherwise."""
    if name not in SPECS:
        raise RecsysError(f"unknown model {name!r}; known models: {', '.join(SPECS)}")
    return SPECS[name]


def names() -> list[str]:
    """Every model name, in catalogue order."""
    return list(SPECS)


def help_text() -> str:
    """One line for ``--model`` help: the names, the default first."""
    rest = [n for n in SPECS if n != DEFAULT_NIGHTLY_MODEL]
    return f"{DEFAULT_NIGHTLY_MODEL} (default), " + ", ".join(rest) + "."


def needs_text(name: str) -> bool:
    return spec(name).needs_text


def uses_text(name: str) -> bool:
    return spec(name).uses_text


def scores_are_ratings(name: str | None) -> bool | None:
    """The spec's flag; None for a name outside the catalogue."""
    return SPECS[name].scores_are_ratings if name in SPECS else None


def model_params(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """The shared CLI ``options`` (None = not given) that model ``name`` takes."""
    given = {k: v for k, v in options.items() if v is not None}
    if name not in SPECS:
        return given
    accepted = SPECS[name].accepts()
    return {k: v for k, v in given.items() if k in accepted}


def create(name: str, **params: Any) -> Recommender:
    """An untrained model by name, its parameters validated by the spec's config."""
    model_spec = spec(name)
    values = model_spec.validate(params)
    try:
        return model_spec.cls()(**model_spec.fixed, **values)
    except TypeError as err:
        raise RecsysError(f"bad parameters for model {name!r}: {err}") from err


def load(directory: Path) -> Recommender:
    """Load a saved model, dispatching on the name in its ``recommender.json``."""
    directory = Path(directory)
    meta_path = directory / META_FILE
    if not meta_path.exists():
        raise RecsysError(f"no saved model in {directory} ({META_FILE} missing)")
    name = json.loads(meta_path.read_text()).get("model")
    if name not in SPECS or name == AUTO:
        raise RecsysError(f"saved model {name!r} in {directory} is not in the catalogue")
    return SPECS[name].cls().load(directory)


class _Factories(dict):
    """Read-only name -> factory view of the catalogue (the older ``MODELS`` interface)."""

    def __init__(self) -> None:
        super().__init__()

    def __contains__(self, name: object) -> bool:
        return name in SPECS

    def __getitem__(self, name: str) -> Callable[..., Recommender]:
        spec(name)
        return lambda **params: create(name, **params)

    def __iter__(self):
        return iter(SPECS)

    def __len__(self) -> int:
        return len(SPECS)

    def keys(self):
        return SPECS.keys()


MODELS = _Factories()
"""name -> factory(**params) returning an untrained Recommender (view of :data:`SPECS`)."""
