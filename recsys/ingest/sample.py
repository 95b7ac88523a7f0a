"""Synthetic shop data with planted structure, in the seed's formats (``recsys sample``).

The generative story, so both the collaborative and the content signal are learnable:

* ``K`` topics. Each topic has an embedding (``K x D``), its own vocabulary of made-up words,
  brands and a category name.
* A product has a topic mixture (sparse Dirichlet: mostly one dominant topic), a popularity
  (Zipf: long tail) and a bias. Its latent factor is ``mixture @ topic_embedding + noise``.
* A user has a taste over topics (sparse Dirichlet), an activity level (log-normal: a few heavy
  raters, many with a handful) and a bias. Their factor is ``taste @ topic_embedding + noise``.
* Which products a user rates: a topic drawn from their taste, then a product of that topic
  drawn by popularity (with a 10% chance of any product by popularity). Each (user, product)
  pair appears at most once.
* The rating: ``round(MEAN + user_bias + product_bias + SCALE * z(user_factor . product_factor)
  + noise)`` clipped to 1-5, which gives the Amazon-like skew (mostly 4 and 5 stars).
* A product's text (title, feature bullets, description with some HTML, category path, brand)
  is drawn 80% from its dominant topic's vocabulary, 20% from a shared one.

Everything streams in blocks of users and products, so nothing the size of users x products
is ever built and memory stays bounded up to the Electronics size (21M ratings, 786k
products). The output is deterministic per seed. ``truth.npz`` holds the planted latent
factors, so tests can compute each user's planted favourites (:func:`expected_ratings`).
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recsys.errors import InputError

TOPICS = 8
DIM = 8
MEAN = 4.1
SCALE = 0.9
NOISE = 0.6
_USER_BLOCK = 20_000
_SHARED_WORDS = 60
_TOPIC_WORDS = 40
_SYLLABLES = (
    "ka lo mi ra zen tor vi ex pla nu qua sil bre dor fin gal "
    "hex jo lum mar neo or pix ron sun tek ul vox wex yar"
).split()
_TOPIC_NAMES = [
    "Audio",
    "Cameras",
    "Computers",
    "Phones",
    "Home Theater",
    "Wearables",
    "Gaming",
    "Networking",
    "Car Electronics",
    "Office",
    "Smart Home",
    "Power",
    "Storage",
    "Printers",
    "Drones",
    "Tools",
]


@dataclass(frozen=True)
class SampleFiles:
    """Where :func:`write_sample` wrote the dataset."""

    ratings_path: Path
    """``ratings.csv``: ``item,user,rating,timestamp``, no header (the seed's layout)."""
    metadata_path: Path
    """``meta.json.gz``: Amazon 2018 metadata JSON lines."""
    truth_path: Path
    """``truth.npz``: the planted factors (see :func:`load_truth`)."""
    ratings: int
    """Rating lines written."""


def _words(rng: np.random.Generator, n: int, used: set[str]) -> list[str]:
    words: list[str] = []
    while len(words) < n:
        word = "".join(rng.choice(_SYLLABLES, size=int(rng.integers(2, 4))))
        if word not in used:
            used.add(word)
            words.append(word)
    return words


# External ids are formatted from the index on the fly (not kept in big arrays while writing).
def _product_id(index: int) -> str:
    return f"B{index:09d}"


def _user_id(index: int) -> str:
    return f"A{index:011d}X"


def _product_ids(n: int) -> np.ndarray:
    return np.array([_product_id(index) for index in range(n)])


def _user_ids(n: int) -> np.ndarray:
    return np.array([_user_id(index) for index in range(n)])


def write_sample(
    out: Path,
    *,
    users: int,
    products: int,
    ratings: int,
    seed: int,
    activity_sigma: float = 1.0,
) -> SampleFiles:
    """Write a synthetic dataset with planted structure into ``out``.

    Args:
        out: output directory (created).
        users: number of users (each rates at least one product).
        products: number of products.
        ratings: number of rating lines; at most ``users * products`` distinct pairs.
        seed: random seed; the same seed writes the same files.
        activity_sigma: sigma of the users' log-normal activity; larger means more skew (a
            few heavier raters, more users with one rating).

    Returns:
        The paths written and the number of rating lines.

    Raises:
        InputError: impossible sizes.
    """
    if users < 1 or products < 1 or ratings < 1:
        raise InputError("sample sizes must be positive")
    if ratings > users * products // 2:
        raise InputError(
            f"{ratings} ratings do not fit {users} users x {products} products "
            "(at most half of all pairs)"
        )
    if ratings < users:
        raise InputError(f"{ratings} ratings for {users} users: every user needs at least one")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    topic_embedding = rng.normal(0.0, 1.0, (TOPICS, DIM)).astype(np.float32)
    product_topics = rng.dirichlet(np.full(TOPICS, 0.15), size=products).astype(np.float32)
    product_factors = product_topics @ topic_embedding + rng.normal(0, 0.3, (products, DIM)).astype(
        np.float32
    )
    product_bias = rng.normal(0.0, 0.3, products).astype(np.float32)
    popularity = 1.0 / np.arange(1, products + 1) ** 0.9
    popularity = rng.permutation(popularity)
    dominant = product_topics.argmax(axis=1)

    user_topics = rng.dirichlet(np.full(TOPICS, 0.3), size=users).astype(np.float32)
    user_factors = user_topics @ topic_embedding + rng.normal(0, 0.3, (users, DIM)).astype(
        np.float32
    )
    user_bias = rng.normal(0.0, 0.25, users).astype(np.float32)
    activity = rng.lognormal(0.0, activity_sigma, users)
    per_user = _allocate(ratings, users, activity, cap=max(1, products // 2), rng=rng)

    # affinity standardisation from a sample of pairs (no users x products matrix)
    probe_u = rng.integers(0, users, 20_000)
    probe_p = rng.integers(0, products, 20_000)
    affinity = np.einsum("ij,ij->i", user_factors[probe_u], product_factors[probe_p])
    aff_mean, aff_std = float(affinity.mean()), float(affinity.std() or 1.0)

    # per-topic popularity CDFs laid side by side: topic t occupies [t, t + 1)
    order = np.lexsort((np.arange(products), dominant))
    topic_of_sorted = dominant[order]
    weights = popularity[order]
    cdf = np.empty(products)
    for topic in range(TOPICS):
        members = topic_of_sorted == topic
        if members.any():
            cumulative = np.cumsum(weights[members])
            cdf[members] = topic + cumulative / cumulative[-1]
    topic_present = np.bincount(dominant, minlength=TOPICS) > 0
    global_cdf = np.cumsum(popularity) / popularity.sum()

    ratings_path = out / "ratings.csv"
    written = 0
    with open(ratings_path, "w", encoding="ascii", newline="\n") as handle:
        for start in range(0, users, _USER_BLOCK):
            stop = min(users, start + _USER_BLOCK)
            written += _write_block(
                handle,
                rng,
                start,
                stop,
                per_user,
                user_topics,
                topic_present,
                cdf,
                order,
                global_cdf,
                user_factors,
                product_factors,
                user_bias,
                product_bias,
                aff_mean,
                aff_std,
                products,
            )

    metadata_path = out / "meta.json.gz"
    _write_metadata(metadata_path, rng, products, product_topics, dominant)

    truth_path = out / "truth.npz"
    np.savez_compressed(
        truth_path,
        user_ids=_user_ids(users),
        product_ids=_product_ids(products),
        user_factors=user_factors,
        product_factors=product_factors,
        user_topics=user_topics,
        product_topics=product_topics,
        user_bias=user_bias,
        product_bias=product_bias,
        topic_embedding=topic_embedding,
        constants=np.array([MEAN, SCALE, aff_mean, aff_std, NOISE], dtype=np.float64),
    )
    return SampleFiles(ratings_path, metadata_path, truth_path, written)


def _allocate(
    total: int, users: int, activity: np.ndarray, *, cap: int, rng: np.random.Generator
) -> np.ndarray:
    """Ratings per user: at least one each, the rest by activity, capped, summing to total."""
    counts = np.ones(users, dtype=np.int64)
    remaining = total - users
    share = activity / activity.sum()
    while remaining > 0:
        extra = rng.multinomial(remaining, share)
        counts = np.minimum(counts + extra, cap)
        remaining = total - int(counts.sum())
        share = np.where(counts >= cap, 0.0, share)
        if share.sum() == 0:
            break
        share = share / share.sum()
    return counts


def _write_block(
    handle,
    rng,
    start,
    stop,
    per_user,
    user_topics,
    topic_present,
    cdf,
    order,
    global_cdf,
    user_factors,
    product_factors,
    user_bias,
    product_bias,
    aff_mean,
    aff_std,
    n_products,
) -> int:
    counts = per_user[start:stop]
    users = np.repeat(np.arange(start, stop), counts)
    chosen_u: list[np.ndarray] = []
    chosen_p: list[np.ndarray] = []
    seen: set[int] | None = None
    pending_u = users
    for attempt in range(40):
        if len(pending_u) == 0:
            break
        if attempt < 5:
            taste = user_topics[pending_u] * topic_present
            taste_cdf = np.cumsum(taste, axis=1)
            draw = rng.random(len(pending_u)) * taste_cdf[:, -1]
            topic = (taste_cdf < draw[:, None]).sum(axis=1)
            within = np.searchsorted(cdf, topic + rng.random(len(pending_u)) * (1 - 1e-12))
            products = order[np.minimum(within, n_products - 1)]
            anywhere = rng.random(len(pending_u)) < 0.1
            products[anywhere] = np.searchsorted(global_cdf, rng.random(int(anywhere.sum())))
        else:  # a few heavy users exhaust their topics: fill uniformly
            products = rng.integers(0, n_products, len(pending_u))
        products = np.minimum(products, n_products - 1)
        keys = pending_u.astype(np.int64) * n_products + products
        if seen is None:
            seen = set()
        keep = np.zeros(len(keys), dtype=bool)
        for i, key in enumerate(keys.tolist()):
            if key not in seen:
                seen.add(key)
                keep[i] = True
        chosen_u.append(pending_u[keep])
        chosen_p.append(products[keep])
        pending_u = pending_u[~keep]
    u = np.concatenate(chosen_u)
    p = np.concatenate(chosen_p)
    order_in_block = np.lexsort((p, u))
    u, p = u[order_in_block], p[order_in_block]
    affinity = np.einsum("ij,ij->i", user_factors[u], product_factors[p])
    score = (
        MEAN
        + user_bias[u]
        + product_bias[p]
        + SCALE * (affinity - aff_mean) / aff_std
        + rng.normal(0.0, NOISE, len(u))
    )
    stars = np.clip(np.rint(score), 1, 5)
    timestamps = rng.integers(1_325_376_000, 1_538_352_000, len(u))  # 2012-01-01 .. 2018-10-01
    lines = [
        f"{_product_id(pi)},{_user_id(ui)},{star:.1f},{ts}\n"
        for pi, ui, star, ts in zip(
            p.tolist(), u.tolist(), stars.tolist(), timestamps.tolist(), strict=True
        )
    ]
    handle.write("".join(lines))
    return len(lines)


def _write_metadata(path: Path, rng, products: int, product_topics, dominant) -> None:
    used: set[str] = set()
    shared = _words(rng, _SHARED_WORDS, used)
    vocab = [_words(rng, _TOPIC_WORDS, used) for _ in range(TOPICS)]
    brands = [
        [
            w.capitalize() + suffix
            for w, suffix in zip(_words(rng, 4, used), ["", "tek", "ix", "co"], strict=True)
        ]
        for _ in range(TOPICS)
    ]
    categories = [_TOPIC_NAMES[t % len(_TOPIC_NAMES)] for t in range(TOPICS)]
    subcategories = [[w.capitalize() for w in _words(rng, 3, used)] for _ in range(TOPICS)]

    def text(topic: int, n: int) -> str:
        from_topic = rng.random(n) < 0.8
        picks = [
            vocab[topic][int(rng.integers(_TOPIC_WORDS))]
            if f
            else shared[int(rng.integers(_SHARED_WORDS))]
            for f in from_topic
        ]
        return " ".join(picks)

    with gzip.open(path, "wt", encoding="utf-8", compresslevel=3) as handle:
        for index in range(products):
            asin = _product_id(index)
            topic = int(dominant[index])
            second = int(np.argsort(product_topics[index])[-2])
            brand = brands[topic][int(rng.integers(4))]
            record = {
                "category": [
                    "Electronics",
                    categories[topic],
                    subcategories[topic][int(rng.integers(3))],
                ],
                "tech1": "",
                "description": [
                    f"<p>{text(topic, 12).capitalize()}.</p><br/>"
                    f"<b>{text(second, 4)}</b> {text(topic, 10)}."
                ],
                "fit": "",
                "title": f"{brand} {text(topic, 3).title()} {index}",
                "also_buy": [],
                "image": [],
                "tech2": "",
                "brand": brand,
                "feature": [text(topic, int(rng.integers(5, 9))) for _ in range(3)],
                "rank": [],
                "also_view": [],
                "details": {},
                "main_cat": "Electronics",
                "similar_item": "",
                "date": "",
                "price": f"${rng.integers(5, 500)}.{rng.integers(0, 100):02d}",
                "asin": asin,
            }
            handle.write(json.dumps(record) + "\n")


def load_truth(path: Path) -> dict[str, np.ndarray]:
    """The planted factors written by :func:`write_sample`, as a dict of arrays.

    Keys: ``user_ids``, ``product_ids`` (external ids, aligned with the factor rows),
    ``user_factors``, ``product_factors``, ``user_topics``, ``product_topics``, ``user_bias``,
    ``product_bias``, ``topic_embedding`` and ``constants`` (MEAN, SCALE, affinity mean and std,
    NOISE).
    """
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


def expected_ratings(truth: dict[str, np.ndarray], user_index: int) -> np.ndarray:
    """The planted noiseless rating of user ``user_index`` for every product (before rounding).

    A user's planted favourites are ``np.argsort(-expected_ratings(truth, u))``.
    """
    mean, scale, aff_mean, aff_std, _ = truth["constants"].tolist()
    affinity = truth["product_factors"] @ truth["user_factors"][user_index]
    return (
        mean
        + truth["user_bias"][user_index]
        + truth["product_bias"]
        + scale * (affinity - aff_mean) / aff_std
    )
