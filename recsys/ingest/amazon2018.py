"""Amazon Review Data 2018 (Jianmo Ni, UCSD): review and metadata JSON lines, plain or .gz.

Reviews: ``overall, reviewerID, asin, unixReviewTime, ...`` (1-5 stars). Metadata: ``asin,
title, feature[], description[], category[], brand, main_cat, ...``, with images either as
``image`` or as ``imageURL``/``imageURLHighRes``; those stay in ``raw``. Text is stored as read,
HTML and all (``main_cat`` is sometimes an ``<img>`` tag): cleaning is the feature step's job.
"""

from __future__ import annotations

import json

from recsys.ingest.rows import (
    BadLine,
    Format,
    ProductRow,
    RatingRow,
    check_json_safe,
    parse_epoch,
    parse_rating,
    register,
    require_id,
    text_or_none,
)


def load_json_object(line: str) -> dict:
    try:
        record = json.loads(line)
    except ValueError as err:
        raise BadLine(f"broken JSON: {err}") from None
    if not isinstance(record, dict):
        raise BadLine("broken JSON: not an object")
    return record


def parse_review(line: str) -> RatingRow:
    record = load_json_object(line)
    user = require_id(record.get("reviewerID"), "user id (reviewerID)")
    product = require_id(record.get("asin"), "product id (asin)")
    rating = parse_rating(record.get("overall"), 1.0, 5.0, 1.0)
    timestamp = parse_epoch(record.get("unixReviewTime"))
    check_json_safe({"u": user, "p": product})
    return RatingRow(user, product, rating, timestamp)


def parse_metadata(line: str) -> ProductRow:
    record = load_json_object(line)
    asin = require_id(record.get("asin"), "product id (asin)")
    check_json_safe(record)
    return _metadata_row(record, asin)


def metadata_record(record: dict) -> ProductRow:
    """The row of a decoded metadata object that is already known to be safe to store as JSON
    (what :func:`parse_metadata` gives for its line)."""
    return _metadata_row(record, require_id(record.get("asin"), "product id (asin)"))


def _metadata_row(record: dict, asin: str) -> ProductRow:
    categories = record.get("category")
    return ProductRow(
        external_id=asin,
        title=text_or_none(record.get("title")),
        brand=text_or_none(record.get("brand")),
        description=text_or_none(record.get("description")),
        feature_text=text_or_none(record.get("feature")),
        categories=[str(c) for c in categories]
        if isinstance(categories, list) and categories
        else None,
        main_category=text_or_none(record.get("main_cat")),
        raw=record,
    )


REVIEWS = register(
    Format(
        "amazon2018-reviews", "ratings", parse_review, description="Amazon 2018 reviews JSON lines"
    )
)
METADATA = register(
    Format(
        "amazon2018-metadata",
        "metadata",
        parse_metadata,
        description="Amazon 2018 metadata JSON lines",
        json_record=metadata_record,
    )
)
