"""Amazon product data 2014 (Julian McAuley, UCSD).

Reviews are JSON lines like 2018's (``reviewerID, asin, overall, unixReviewTime, helpful``).
Metadata is one *Python dict literal* per line (single quotes), parsed with
``ast.literal_eval`` only - never ``eval``. ``categories`` is a list of category paths: the
paths are flattened in order without repeats; ``main_category`` is the ``salesRank`` key when
present, else the first path's root.
"""

from __future__ import annotations

import ast

from recsys.ingest.amazon2018 import parse_review
from recsys.ingest.rows import (
    BadLine,
    Format,
    ProductRow,
    check_json_safe,
    register,
    require_id,
    text_or_none,
)


def parse_metadata(line: str) -> ProductRow:
    try:
        record = ast.literal_eval(line)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as err:
        raise BadLine(f"broken dict literal: {type(err).__name__}") from None
    if not isinstance(record, dict):
        raise BadLine("broken dict literal: not a dict")
    asin = require_id(record.get("asin"), "product id (asin)")
    check_json_safe(record)
    categories: list[str] = []
    paths = record.get("categories")
    if isinstance(paths, list):
        for path in paths:
            for name in path if isinstance(path, list) else [path]:
                if str(name) not in categories:
                    categories.append(str(name))
    main_category = None
    rank = record.get("salesRank")
    if isinstance(rank, dict) and rank:
        main_category = str(next(iter(rank)))
    elif isinstance(paths, list) and paths and isinstance(paths[0], list) and paths[0]:
        main_category = str(paths[0][0])
    return ProductRow(
        external_id=asin,
        title=text_or_none(record.get("title")),
        brand=text_or_none(record.get("brand")),
        description=text_or_none(record.get("description")),
        feature_text=text_or_none(record.get("feature")),
        categories=categories or None,
        main_category=main_category,
        raw=record,
    )


REVIEWS = register(
    Format(
        "amazon2014-reviews", "ratings", parse_review, description="Amazon 2014 reviews JSON lines"
    )
)
METADATA = register(
    Format(
        "amazon2014-metadata",
        "metadata",
        parse_metadata,
        description="Amazon 2014 metadata, one Python dict literal per line",
    )
)
