"""Amazon Reviews 2023 (McAuley Lab): review and metadata JSON lines.

Reviews: ``rating, user_id, asin, parent_asin, timestamp`` with the timestamp in
*milliseconds*. The product id is ``parent_asin`` when present, else ``asin``: in 2023 the
metadata is keyed by parent_asin (all colour/size variants of one product share it), so rating
and metadata meet on it. Metadata: ``parent_asin, title, features[], description[],
categories[], store (-> brand), main_category``.
"""

from __future__ import annotations

from recsys.ingest.amazon2018 import load_json_object
from recsys.ingest.rows import (
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


def parse_review(line: str) -> RatingRow:
    record = load_json_object(line)
    user = require_id(record.get("user_id"), "user id (user_id)")
    product_id = record.get("parent_asin") or record.get("asin")
    product = require_id(product_id, "product id (parent_asin/asin)")
    rating = parse_rating(record.get("rating"), 1.0, 5.0, 1.0)
    timestamp = parse_epoch(record.get("timestamp"), divisor=1000)
    check_json_safe({"u": user, "p": product})
    return RatingRow(user, product, rating, timestamp)


def parse_metadata(line: str) -> ProductRow:
    record = load_json_object(line)
    product = _product_id(record)
    check_json_safe(record)
    return _metadata_row(record, product)


def metadata_record(record: dict) -> ProductRow:
    """The row of a decoded metadata object that is already known to be safe to store as JSON
    (what :func:`parse_metadata` gives for its line)."""
    return _metadata_row(record, _product_id(record))


def _product_id(record: dict) -> str:
    return require_id(record.get("parent_asin") or record.get("asin"), "product id (parent_asin)")


def _metadata_row(record: dict, product: str) -> ProductRow:
    categories = record.get("categories")
    return ProductRow(
        external_id=product,
        title=text_or_none(record.get("title")),
        brand=text_or_none(record.get("store")),
        description=text_or_none(record.get("description")),
        feature_text=text_or_none(record.get("features")),
        categories=[str(c) for c in categories]
        if isinstance(categories, list) and categories
        else None,
        main_category=text_or_none(record.get("main_category")),
        raw=record,
    )


REVIEWS = register(
    Format(
        "amazon2023-reviews", "ratings", parse_review, description="Amazon 2023 reviews JSON lines"
    )
)
METADATA = register(
    Format(
        "amazon2023-metadata",
        "metadata",
        parse_metadata,
        description="Amazon 2023 metadata JSON lines",
        json_record=metadata_record,
    )
)
