"""The seed notebook's ratings CSV (Amazon 2018 "ratings only"): ``item,user,rating,timestamp``.

No header; ratings 1-5 in whole stars; unix seconds.
"""

from __future__ import annotations

from recsys.ingest.rows import BadLine, Format, RatingRow, parse_epoch, parse_rating, register


def parse(line: str) -> RatingRow:
    fields = line.split(",")
    if len(fields) != 4:
        raise BadLine(f"expected 4 comma-separated fields, got {len(fields)}")
    item, user, rating, timestamp = fields
    item = item.strip()
    user = user.strip()
    if not user:
        raise BadLine("missing user id")
    if not item:
        raise BadLine("missing product id")
    return RatingRow(user, item, parse_rating(rating, 1.0, 5.0, 1.0), parse_epoch(timestamp))


FORMAT = register(
    Format(
        "ratings-csv",
        "ratings",
        parse,
        description="seed / Amazon 2018 ratings-only CSV: item,user,rating,timestamp, no header",
    )
)
