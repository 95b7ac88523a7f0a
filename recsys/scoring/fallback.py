"""Fallback lists under the rules (numpy and Python only; no database).

Users the model does not know get the most rated products; with ``use_categories`` first the
most rated products in the categories of the products they rated (strategy
``category_popularity``, reason "popular in <category>"), topped up from the global list
(strategy ``popularity``, reason "popular"). Model users whose list the rules left short are
backfilled the same way, after their model rows.

The fallback score is the product's number of ratings times its boost factor; products are
taken in that order (ties: lower product id first). Unavailable products, products the user
rated or excluded, and products already in the list are skipped, and the category and brand
caps apply, counting the rows already in the list.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class FallbackRow:
    product_id: int
    score: float
    category: bool
    """True: taken as popular in one of the user's categories."""
    category_code: int


@dataclass
class Fallback:
    """Popularity order of one run, with the rules that do not depend on the user applied."""

    product_ids: np.ndarray
    """int64: eligible products, best first."""
    scores: np.ndarray
    """float32: number of ratings times boost factor."""
    category: np.ndarray
    """int64 category code of each (-1: none)."""
    brand: np.ndarray
    """int64 brand code of each (-1: none)."""
    boosted: np.ndarray
    """bool: whether the product has a boost."""
    max_per_category: int | None = None
    max_per_brand: int | None = None
    by_category: dict[int, np.ndarray] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        pop_ids: np.ndarray,
        pop_counts: np.ndarray,
        *,
        eligible: np.ndarray,
        factor: np.ndarray,
        category: np.ndarray,
        brand: np.ndarray,
        max_per_category: int | None = None,
        max_per_brand: int | None = None,
    ) -> Fallback:
        """Order the popular products by boosted count, drop ineligible ones.

        Args:
            pop_ids, pop_counts: rated products and their number of ratings.
            eligible: bool per product, False for unavailable or deleted products.
            factor: float per product, its boost factor (1.0 without a boost).
            category, brand: group code per product.
            max_per_category, max_per_brand: caps (None: no cap).
        """
        keep = np.asarray(eligible, dtype=bool)
        ids = np.asarray(pop_ids, dtype=np.int64)[keep]
        scores = (np.asarray(pop_counts, dtype=np.float64)[keep] * np.asarray(factor)[keep]).astype(
            np.float32
        )
        order = np.lexsort((ids, -scores))
        cats = np.asarray(category)[keep][order]
        by_category: dict[int, list[int]] = {}
        for position, code in enumerate(cats.tolist()):
            if code >= 0:
                by_category.setdefault(code, []).append(position)
        return cls(
            product_ids=ids[order],
            scores=scores[order],
            category=cats,
            brand=np.asarray(brand)[keep][order],
            boosted=(np.asarray(factor)[keep] != 1.0)[order],
            max_per_category=max_per_category,
            max_per_brand=max_per_brand,
            by_category={c: np.asarray(p, dtype=np.int64) for c, p in by_category.items()},
        )

    def fill(
        self,
        need: int,
        *,
        skip: set[int],
        user_categories: set[int],
        taken_categories: list[int] | None = None,
        taken_brands: list[int] | None = None,
        use_categories: bool = True,
        excluded: set[int] | None = None,
        counts: dict[str, int] | None = None,
    ) -> list[FallbackRow]:
        """Up to ``need`` rows for one user.

        Args:
            need: rows wanted.
            skip: product ids never to take (rated, excluded, already listed).
            user_categories: category codes of the products the user rated.
            taken_categories, taken_brands: group codes of the rows already in the list.
            use_categories: the user's categories first.
            excluded: the user's exclusions (also in ``skip``), counted when passed over.
            counts: incremented in place: ``excluded``, ``category_cap``, ``brand_cap`` for
                candidates passed over by that rule while the list was open.
        """
        out: list[FallbackRow] = []
        if need <= 0:
            return out
        per_cat: dict[int, int] = {}
        per_brand: dict[int, int] = {}
        for c in taken_categories or ():
            if c >= 0:
                per_cat[c] = per_cat.get(c, 0) + 1
        for b in taken_brands or ():
            if b >= 0:
                per_brand[b] = per_brand.get(b, 0) + 1
        used: set[int] = set()
        passed: set[int] = set()

        def consider(position: int, in_category: bool) -> bool:
            pid = int(self.product_ids[position])
            if position in passed:  # seen in the category pass already
                return False
            passed.add(position)
            if pid in skip or position in used:
                if counts is not None and excluded and pid in excluded and position not in used:
                    counts["excluded"] = counts.get("excluded", 0) + 1
                return False
            c, b = int(self.category[position]), int(self.brand[position])
            if self.max_per_category is not None and c >= 0:
                if per_cat.get(c, 0) >= self.max_per_category:
                    if counts is not None:
                        counts["category_cap"] = counts.get("category_cap", 0) + 1
                    return False
            if self.max_per_brand is not None and b >= 0:
                if per_brand.get(b, 0) >= self.max_per_brand:
                    if counts is not None:
                        counts["brand_cap"] = counts.get("brand_cap", 0) + 1
                    return False
            used.add(position)
            if c >= 0:
                per_cat[c] = per_cat.get(c, 0) + 1
            if b >= 0:
                per_brand[b] = per_brand.get(b, 0) + 1
            out.append(FallbackRow(pid, float(self.scores[position]), in_category, c))
            return len(out) >= need

        if use_categories and user_categories:
            # without caps, at most need + len(skip) of one category can be looked at
            capped = self.max_per_category is not None or self.max_per_brand is not None
            limit = None if capped else need + len(skip)
            parts = [self.by_category[c][:limit] for c in user_categories if c in self.by_category]
            if parts:
                for position in np.unique(np.concatenate(parts)).tolist():
                    if consider(position, True):
                        return out
        for position in range(len(self.product_ids)):
            if consider(position, False):
                return out
        return out
