"""The report page: one self-contained static HTML file (inline CSS, PNG data URIs, no script).

Every text that comes from the database goes through :func:`html.escape`. Figures carry
machine-readable attributes so that tests (and anyone scraping the page) can find them:

* each section is ``<section id="..." data-section="...">`` (``summary``, ``steps``,
  ``training``, ``quality``, ``lists``, ``samples``, ``gates``);
* each chart is ``<img data-chart="...">``;
* each single figure is an element with ``data-figure="name"`` and its raw value in
  ``data-value`` (the text shows it formatted);
* table rows carry ``data-*`` keys (``data-step``, ``data-asin``, ``data-strategy``,
  ``data-user``, ...).
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from recsys.report import charts
from recsys.report.queries import ModelInfo, ReportData, SampleUser, metric

NOT_MEASURED = "not measured"


def e(value: Any) -> str:
    """Escaped text of ``value`` ('' for None)."""
    return "" if value is None else html.escape(str(value), quote=True)


def _figure(name: str, value: Any, text: str | None = None, tag: str = "span") -> str:
    raw = "" if value is None else value
    shown = text if text is not None else ("" if value is None else str(value))
    return f'<{tag} data-figure="{e(name)}" data-value="{e(raw)}">{e(shown)}</{tag}>'


def _num(value: Any, digits: int = 4) -> str:
    if value is None:
        return NOT_MEASURED
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _when(value: datetime | None) -> str:
    return "" if value is None else f"{value:%Y-%m-%d %H:%M:%S %Z}".strip()


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, sec = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {sec:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _short(value: Any) -> str:
    """A step detail value for the table: floats to 4 significant digits."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_short(v)}" for k, v in value.items()) + "}"
    return str(value)


def _img(name: str, uri: str | None, alt: str, empty: str) -> str:
    if uri is None:
        return f'<p class="empty" data-empty-chart="{e(name)}">{e(empty)}</p>'
    return f'<img data-chart="{e(name)}" src="{uri}" alt="{e(alt)}">'


def _table(
    headers: Iterable[str], rows: Iterable[str], cls: str = "", name: str | None = None
) -> str:
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    data = f' data-table="{e(name)}"' if name else ""
    return (
        f'<table class="{cls}"{data}><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _badge(status: str) -> str:
    return f'<span class="badge {e(status)}">{e(status)}</span>'


def _section(key: str, title: str, body: str) -> str:
    return f'<section id="{key}" data-section="{key}"><h2>{e(title)}</h2>{body}</section>'


# --- sections ------------------------------------------------------------------------------


def _summary(d: ReportData) -> str:
    r = d.run
    seconds = (
        (r.finished_at - r.started_at).total_seconds() if r.finished_at and r.started_at else None
    )
    cards = [
        ("status", _badge(r.status)),
        ("started", e(_when(r.started_at))),
        ("took", _figure("run-seconds", seconds, _duration(seconds))),
        ("trigger", e(r.trigger)),
    ]
    if d.model is not None:
        cards.append(("model", e(f"{d.model.model_type} (model run {d.model.id})")))
    if d.rec is not None:
        served = "served now" if d.rec.served_now else "not served now"
        cards.append(
            (
                "recommendation run",
                e(f"{d.rec.id}: {d.rec.status}, {served}"),
            )
        )
        cards.append(("users with a list", _figure("users", d.rec.n_users, f"{d.rec.n_users:,}")))
    if d.lists is not None and d.lists.catalogue:
        cov = d.lists.products_recommended / d.lists.catalogue
        cards.append(("catalogue coverage", e(f"{cov:.1%}")))
    ndcg, pop, split = _headline_quality(d)
    if ndcg is not None:
        text = f"{ndcg:.4f}" + (f" vs popularity {pop:.4f}" if pop is not None else "")
        cards.append((f"NDCG@10 ({split})", e(text)))
    items = "".join(
        f'<div class="card"><div class="k">{e(k)}</div><div>{v}</div></div>' for k, v in cards
    )
    message = f'<p class="message">{e(r.message)}</p>' if r.message else ""
    notes = "".join(f'<p class="note">{e(n)}</p>' for n in d.notes)
    return _section("summary", "At a glance", f'<div class="cards">{items}</div>{message}{notes}')


def _headline_quality(d: ReportData) -> tuple[float | None, float | None, str]:
    if d.model is None:
        return None, None, ""
    m = d.model.metrics
    internal = metric(m, "internal", "ndcg@10")
    if isinstance(internal, int | float):
        pop = metric(m, "internal", "popularity_ndcg@10")
        return float(internal), float(pop) if isinstance(pop, int | float) else None, "internal"
    rank = metric(m, "rank", "ndcg@10")
    if isinstance(rank, int | float):
        pop = metric(m, "rank", "popularity_ndcg@10")
        return float(rank), float(pop) if isinstance(pop, int | float) else None, "rank split"
    return None, None, ""


def _steps(d: ReportData) -> str:
    start = d.run.started_at
    bars = []
    for s in d.steps:
        offset = (s.started_at - start).total_seconds() if s.started_at and start else 0.0
        bars.append((s.step, s.status, max(0.0, offset), float(s.seconds or 0.0)))
    timeline = _img(
        "steps-timeline",
        charts.steps_timeline(bars),
        "timeline of this run's steps",
        "no steps recorded",
    )
    rows = []
    for s in d.steps:
        detail = ", ".join(
            f"{k}={_short(v)}" for k, v in s.detail.items() if k != "metrics" and v is not None
        )
        rows.append(
            f'<tr data-step="{e(s.step)}" data-status="{e(s.status)}" '
            f'data-seconds="{e(s.seconds if s.seconds is not None else "")}">'
            f"<td>{e(s.step)}</td><td>{_badge(s.status)}</td>"
            f'<td class="n">{e(_duration(s.seconds))}</td>'
            f'<td class="detail">{e(s.message or detail)}</td></tr>'
        )
    table = _table(("step", "outcome", "seconds", "detail"), rows, "steps", "steps")
    order: list[str] = []
    for t in d.trend:
        for step in t.seconds:
            if step not in order:
                order.append(step)
    known = [s.step for s in d.steps]
    order = [s for s in known if s in order] + [s for s in order if s not in known]
    trend = _img(
        "steps-trend",
        charts.steps_trend([(t.run_id, t.status, t.seconds) for t in d.trend], order, d.run.id),
        "seconds per step over the last runs",
        "no earlier runs",
    )
    n = len(d.trend)
    trend_title = "Earlier runs: none yet" if n <= 1 else f"The last {n} runs"
    body = (
        "<h3>This run</h3>"
        + timeline
        + table
        + f"<h3>{e(trend_title)}</h3>"
        + trend
        + '<p class="caption">Seconds per step of each pipeline run up to this one; '
        "runs that did not succeed are labelled.</p>"
    )
    return _section("steps", "Steps", body)


def ndcg_points(history: dict, params: dict | None = None) -> list[tuple[float, float]]:
    """Internal-validation NDCG@10 per evaluation, as (epoch, value), from a model's history.

    Accepted shapes (the first key found wins): ``val_ndcg`` / ``validation_ndcg`` /
    ``internal_ndcg`` / ``val_ndcg@10`` / ``evaluations`` holding a list of numbers (epochs from
    ``val_ndcg_epochs`` / ``eval_epochs``, else every ``eval_every`` epochs from the params),
    of ``[epoch, value]`` pairs, or of ``{"epoch": .., "ndcg@10" | "ndcg" | "value": ..}``.
    """
    keys = ("val_ndcg", "validation_ndcg", "internal_ndcg", "val_ndcg@10", "evaluations")
    series = next((history[k] for k in keys if isinstance(history.get(k), list)), None)
    if not series:
        return []
    points: list[tuple[float, float]] = []
    epochs = history.get("val_ndcg_epochs") or history.get("eval_epochs")
    every = int((params or {}).get("eval_every") or 1)
    for i, item in enumerate(series):
        if isinstance(item, dict):
            value = next((item[k] for k in ("ndcg@10", "ndcg", "value") if k in item), None)
            epoch = item.get("epoch", i + 1)
        elif isinstance(item, list | tuple) and len(item) == 2:
            epoch, value = item
        else:
            value = item
            epoch = epochs[i] if isinstance(epochs, list) and i < len(epochs) else (i + 1) * every
        if isinstance(value, int | float) and isinstance(epoch, int | float):
            points.append((float(epoch), float(value)))
    return points


def _training(d: ReportData) -> str:
    if d.model is None:
        return _section("training", "Training", '<p class="empty">no model run in this run</p>')
    m = d.model
    h = m.history
    train = [float(x) for x in h.get("train_loss") or [] if isinstance(x, int | float)]
    val = [float(x) for x in h.get("val_loss") or [] if isinstance(x, int | float)]
    loss = _img(
        "training-loss",
        charts.loss_curve(train, val, h.get("best_epoch")),
        "loss per epoch",
        f"no loss per epoch recorded ({h.get('stopped_reason') or 'the model records none'})",
    )
    points = ndcg_points(h, m.params)
    ndcg = _img(
        "training-ndcg",
        charts.ndcg_curve(points),
        "internal-validation NDCG@10 per evaluation",
        "internal-validation NDCG@10 per evaluation: not recorded in this model run's history",
    )
    fit_seconds = sum(float(x) for x in h.get("epoch_seconds") or [])
    facts = [
        ("model", e(f"{m.model_type} (run {m.id}, {m.status})")),
        (
            "data",
            e(
                f"{_num(m.n_users)} users, {_num(m.n_products)} products, "
                f"{_num(m.n_ratings)} ratings"
            ),
        ),
        ("epochs", _figure("epochs", len(train), str(len(train)))),
        ("kept epoch", e(h.get("best_epoch") or "")),
        ("stopped", e(h.get("stopped_reason") or "")),
    ]
    if fit_seconds:
        facts.append(("seconds in epochs", e(_duration(fit_seconds))))
    params = ", ".join(f"{k}={v}" for k, v in sorted(m.params.items()))
    facts.append(("parameters", f'<span class="detail">{e(params)}</span>'))
    dl = "".join(f"<dt>{e(k)}</dt><dd>{v}</dd>" for k, v in facts)
    body = (
        f'<dl class="facts">{dl}</dl><div class="pair"><div><h3>Loss per epoch</h3>{loss}</div>'
        f"<div><h3>Internal-validation NDCG@10</h3>{ndcg}</div></div>"
    )
    return _section("training", "Training", body)


_QUALITY_COLUMNS = (
    ("ndcg@10", "NDCG@10"),
    ("recall@10", "Recall@10"),
    ("coverage@10", "coverage@10"),
    ("popularity_percentile", "popularity pct."),
    ("rmse", "RMSE"),
    ("mae", "MAE"),
    ("fit_seconds", "fit s"),
)


def quality_rows(metrics: dict, model_type: str) -> list[dict[str, Any]]:
    """One row per (split, model) measurement stored with the model run."""
    rows: list[dict[str, Any]] = []
    internal = metrics.get("internal")
    if isinstance(internal, dict):
        rows.append(
            {"split": "train-internal", "model": model_type, "served": True, **_numbers(internal)}
        )
        rows.append(
            {
                "split": "train-internal",
                "model": "popularity",
                "served": False,
                "ndcg@10": internal.get("popularity_ndcg@10"),
            }
        )
    auto = metrics.get("auto")
    if isinstance(auto, dict):
        chosen = auto.get("chosen")
        for c in auto.get("candidates") or []:
            if not isinstance(c, dict):
                continue
            rows.append(
                {
                    "split": "--model auto",
                    "model": f"{c.get('model')}"
                    + (" (chosen)" if c.get("model") == chosen else ""),
                    "served": c.get("model") == chosen,
                    **_numbers(c),
                }
            )
    rank = metrics.get("rank")
    if isinstance(rank, dict):
        rows.append(
            {"split": "rank (80/20)", "model": model_type, "served": True, **_numbers(rank)}
        )
        popularity = {
            k.removeprefix("popularity_"): v
            for k, v in rank.items()
            if k.startswith("popularity_") and k != "popularity_percentile"
        }
        rows.append(
            {
                "split": "rank (80/20)",
                "model": "popularity",
                "served": False,
                **_numbers(popularity),
            }
        )
    seed = metrics.get("seed")
    if isinstance(seed, dict):
        rows.append(
            {"split": "seed (70/30)", "model": model_type, "served": True, **_numbers(seed)}
        )
    return rows


def _numbers(d: dict) -> dict[str, float]:
    return {
        k: float(v) for k, v in d.items() if isinstance(v, int | float) and not isinstance(v, bool)
    }


def _quality(d: ReportData) -> str:
    if d.model is None:
        return _section("quality", "Quality", '<p class="empty">no model run in this run</p>')
    rows = quality_rows(d.model.metrics, d.model.model_type)
    unmeasured = _unmeasured_splits(d.model)
    if not rows:
        why = (
            "trained with --no-evaluate"
            if d.model.params.get("evaluate") is False
            else "no evaluation was recorded"
        )
        body = (
            f'<p class="empty" data-figure="quality" data-value="">{NOT_MEASURED}: '
            f"the model run stored no metrics ({why}), for the model or for popularity</p>"
            + unmeasured
        )
        return _section("quality", "Quality", body)
    columns = [c for c in _QUALITY_COLUMNS if any(c[0] in r for r in rows)]
    if not any(c[0] == "ndcg@10" for c in columns):
        columns.insert(0, ("ndcg@10", "NDCG@10"))
    html_rows = []
    for r in rows:
        cells = "".join(
            f'<td class="n" data-metric="{e(key)}" data-value="{e(r.get(key, ""))}">'
            f"{e(_num(r.get(key)))}</td>"
            for key, _ in columns
        )
        cls = ' class="served"' if r["served"] else ""
        html_rows.append(
            f'<tr{cls} data-split="{e(r["split"])}" data-model="{e(r["model"])}">'
            f"<td>{e(r['split'])}</td><td>{e(r['model'])}</td>{cells}</tr>"
        )
    table = _table(("split", "model", *[c[1] for c in columns]), html_rows, "quality", "quality")
    bars = [
        (f"{r['model']} · {r['split']}", float(r["ndcg@10"]), bool(r["served"]))
        for r in rows
        if isinstance(r.get("ndcg@10"), float)
    ]
    chart = _img("quality-ndcg", charts.metric_bars(bars, "NDCG@10"), "NDCG@10", "")
    caption = (
        '<p class="caption">Stored with the model run: each split is the same data for every '
        f"row in it. &ldquo;{NOT_MEASURED}&rdquo;: that figure was not computed for that model "
        "on that split.</p>"
    )
    body = table + caption + unmeasured + (chart if len(bars) > 1 else "")
    return _section("quality", "Quality", body)


def _unmeasured_splits(m: ModelInfo) -> str:
    """A line per split the model run was not measured on because of ``--no-evaluate``."""
    if m.params.get("evaluate") is not False:
        return ""
    lines = []
    if "rank" not in m.metrics:
        lines.append(
            (
                "rank",
                f"rank split (80/20): {NOT_MEASURED} for the model and for popularity: the model "
                "run was trained with --no-evaluate, which skips the evaluation protocol.",
            )
        )
    if "internal" not in m.metrics:
        lines.append(
            (
                "internal",
                f"train-internal split: {NOT_MEASURED}: --no-evaluate skips it too, so the NDCG "
                "gate records its ratio as not measured.",
            )
        )
    return "".join(
        f'<p class="empty" data-figure="not-measured-{split}" data-value="{e(NOT_MEASURED)}">'
        f"{e(line)}</p>"
        for split, line in lines
    )


def _lists(d: ReportData) -> str:
    rec = d.rec
    if rec is None:
        return _section("lists", "The lists", '<p class="empty">this run scored no lists</p>')
    counts = sorted(rec.counts.items(), key=lambda kv: -kv[1])
    strategy_rows = [
        f'<tr data-strategy="{e(k)}"><td>{e(k)}</td>'
        f'<td class="n">{_figure("strategy-" + k, v, f"{v:,}")}</td>'
        f'<td class="n">{e(f"{v / max(1, rec.n_users):.1%}")}</td></tr>'
        for k, v in counts
    ]
    strategies = _table(("strategy", "users", "share"), strategy_rows, "narrow", "strategies")
    strategy_chart = _img("strategies", charts.strategy_bars(counts), "users per strategy", "")
    head = (
        f"<p>Recommendation run {e(rec.id)} ({e(rec.status)}, k={e(rec.k)}, "
        f"{e(_when(rec.generated_at))}): {_figure('rows', rec.n_rows, f'{rec.n_rows:,}')} rows "
        f"for {e(f'{rec.n_users:,}')} users.</p>"
    )
    body = head + '<div class="pair"><div>' + strategies + "</div><div>" + strategy_chart
    body += "</div></div>"
    ls = d.lists
    if ls is None:
        note = " ".join(d.notes) or "its rows are not available"
        return _section("lists", "The lists", body + f'<p class="empty">{e(note)}</p>')
    coverage = ls.products_recommended / ls.catalogue if ls.catalogue else None
    rated_cov = ls.products_recommended / ls.rated_products if ls.rated_products else None
    body += "<h3>Catalogue coverage</h3><p>"
    body += _figure("products-recommended", ls.products_recommended, f"{ls.products_recommended:,}")
    body += " distinct products recommended, of "
    body += _figure("catalogue", ls.catalogue, f"{ls.catalogue:,}")
    body += " in the catalogue: "
    body += _figure("coverage", coverage, "n/a" if coverage is None else f"{coverage:.1%}", "b")
    body += f" ({e('n/a' if rated_cov is None else f'{rated_cov:.1%}')} of the "
    body += f"{e(f'{ls.rated_products:,}')} products that have ratings).</p>"
    body += "<h3>Popularity of what is recommended</h3>"
    body += (
        f'<figure data-chart-data="popularity" data-buckets="{e(json.dumps(ls.buckets))}" '
        f'data-bucket-products="{e(json.dumps(ls.bucket_products))}">'
    )
    body += _img(
        "popularity",
        charts.popularity_histogram(ls.buckets),
        "recommended products by popularity percentile",
        "nothing recommended",
    )
    popular_share = ls.buckets[-1] / ls.rows if ls.rows else None
    body += (
        '<figcaption class="caption">Each recommendation (user, product) counted once, by the '
        "product's percentile in the number of ratings among products that have ratings "
        "(100 = the most rated). A list without popularity bias would follow the dashed line. "
        + (
            "Figures of the moment the run was scored (counts stored with its rows). "
            if ls.stored
            else "Computed from the run's rows and the ratings of now (this run stored no "
            "per-product counts). "
        )
        + "In the top decile: "
        + _figure(
            "top-decile-share",
            popular_share,
            "n/a" if popular_share is None else f"{popular_share:.1%}",
            "b",
        )
        + " of the recommendations.</figcaption></figure>"
    )
    top_rows = [
        f'<tr data-asin="{e(t.asin)}" data-users="{t.users}">'
        f'<td class="n">{i}</td><td>{e(t.title or "(no title)")}'
        f'<div class="sub">{e(t.asin)}{(" · " + e(t.brand)) if t.brand else ""}</div></td>'
        f'<td class="n">{t.users:,}</td><td class="n">{t.first:,}</td>'
        f'<td class="n">{t.mean_rank:.1f}</td>'
        f'<td class="n">{"none" if t.percentile is None else f"{100 * t.percentile:.0f}"}</td></tr>'
        for i, t in enumerate(ls.top, 1)
    ]
    body += f"<h3>The {len(ls.top)} most recommended products</h3>"
    body += _table(
        ("#", "product", "lists", "at rank 1", "mean rank", "popularity pct."),
        top_rows,
        "top",
        "top-products",
    )
    body += "<h3>Overlap with the previous run</h3>" + _overlap(d)
    return _section("lists", "The lists", body)


def _overlap(d: ReportData) -> str:
    o = d.overlap
    if o is None:
        return '<p class="empty">not measured</p>'
    if o.note:
        return f'<p class="empty" data-figure="overlap" data-value="">{e(o.note)}</p>'
    how = (
        "all users of this run" if o.exact else f"{o.users:,} users drawn at random (seed {d.seed})"
    )
    share = "n/a" if o.mean_share is None else f"{o.mean_share:.1%}"
    with_previous = f"{o.users_with_previous:,}"
    per_user = (
        f"<p>Per user, compared with recommendation run {e(o.previous_run_id)} over {e(how)}: "
        f"{_figure('overlap-users-with-previous', o.users_with_previous, with_previous)}"
        f" of {_figure('overlap-users', o.users, f'{o.users:,}')} users had a list before; on "
        f"average {_figure('overlap', o.mean_share, share, 'b')} of a user's list was already in "
        f"their previous list, and {_figure('overlap-identical', o.identical, f'{o.identical:,}')}"
        " lists hold the same products as before.</p>"
    )
    p = o.products
    if p is None:
        return per_user + (
            '<p class="caption">Per product: not recorded (a run without stored per-product '
            "counts).</p>"
        )
    bound = p.shared_rows_bound / p.rows if p.rows else None
    shown = "n/a" if bound is None else f"{bound:.1%}"
    return per_user + (
        "<p>Per product, over all users (exact, from both runs' stored counts): "
        f"{_figure('overlap-shared-products', p.shared_products, f'{p.shared_products:,}')} of "
        f"this run's {e(f'{p.products:,}')} products were recommended in run "
        f"{e(o.previous_run_id)} too (which recommended {e(f'{p.previous_products:,}')}); "
        f"at most {_figure('overlap-rows-bound', bound, shown, 'b')} of this run's "
        "recommendations can repeat a (user, product) pair of that run (the sum over products "
        "of the smaller of the two runs' counts, over this run's rows).</p>"
    )


def _sample(u: SampleUser, d: ReportData) -> str:
    rated = (
        "".join(
            f'<tr><td class="n">{rating:g}</td><td>{e(title or asin)}</td></tr>'
            for asin, title, rating in u.rated
        )
        or '<tr><td colspan="2" class="empty">no ratings</td></tr>'
    )
    extra = d.has_reason or d.has_because
    listed = []
    for item in u.recommended:
        why = ""
        if extra:
            parts = [p for p in (item.reason, item.because and f"because of {item.because}") if p]
            why = f'<td class="why">{e("; ".join(parts))}</td>'
        listed.append(
            f'<tr data-rank="{item.rank}" data-asin="{e(item.asin)}"><td class="n">{item.rank}</td>'
            f"<td>{e(item.title or item.asin)}</td>"
            f'<td class="sub">{e(item.strategy)} {item.score:.3g}</td>{why}</tr>'
        )
    list_head = "<tr><th>#</th><th>product</th><th>strategy, score</th>"
    list_head += ("<th>reason</th>" if extra else "") + "</tr>"
    return (
        f'<div class="sample" data-user="{e(u.external_id)}">'
        f'<h3>User {e(u.external_id)} <span class="sub">{u.n_ratings:,} ratings</span></h3>'
        '<div class="pair"><div><h4>Top-rated</h4><table class="mini"><thead><tr><th>rating</th>'
        f"<th>product</th></tr></thead><tbody>{rated}</tbody></table></div>"
        f'<div><h4>Published list</h4><table class="mini"><thead>{list_head}</thead>'
        f"<tbody>{''.join(listed)}</tbody></table></div></div></div>"
    )


def _samples(d: ReportData) -> str:
    if not d.samples:
        return _section("samples", "Samples", '<p class="empty">no lists to sample</p>')
    note = "" if d.has_reason else " Reasons: not recorded by this schema (no reason column)."
    intro = (
        f'<p class="caption">{len(d.samples)} users drawn at random with seed {d.seed}: '
        f"their highest-rated products beside the list they are served.{e(note)}</p>"
    )
    return _section("samples", "Samples", intro + "".join(_sample(u, d) for u in d.samples))


def _gates(d: ReportData) -> str:
    rec = d.rec
    if rec is None:
        return _section("gates", "Gates and rules", '<p class="empty">no recommendation run</p>')
    parts = ["<h3>Gates</h3>"]
    if not rec.has_gates_column:
        parts.append('<p class="empty">not recorded: this schema has no gates</p>')
    elif not rec.gates:
        parts.append('<p class="empty">no gates were checked for this run</p>')
    else:
        g = rec.gates
        verdict = "passed" if g.get("passed") else "failed"
        forced = " (published with --force)" if g.get("forced") else ""
        parts.append(
            f"<p>{_figure('gates-passed', bool(g.get('passed')), verdict, 'b')}{e(forced)}</p>"
        )
        rows = [
            f'<tr data-gate="{e(c.get("gate"))}" data-passed="{e(bool(c.get("passed")))}">'
            f'<td>{e(c.get("gate"))}</td><td class="n">{e(_num(c.get("value")))}</td>'
            f'<td class="n">{e("" if c.get("min") is None else _num(c.get("min")))}</td>'
            f'<td class="n">{e("" if c.get("max") is None else _num(c.get("max")))}</td>'
            f"<td>{_badge('succeeded' if c.get('passed') else 'failed')}</td></tr>"
            for c in g.get("checks") or []
            if isinstance(c, dict)
        ]
        parts.append(_table(("gate", "value", "min", "max", "outcome"), rows, "narrow", "gates"))
    parts.append("<h3>Rule counts</h3>")
    if not rec.has_rule_counts_column:
        parts.append('<p class="empty">not recorded: this schema has no business rules</p>')
    elif not rec.rule_counts:
        parts.append('<p class="empty">no rule counts recorded for this run</p>')
    else:
        rows = [
            f'<tr data-rule="{e(k)}"><td>{e(k.replace("_", " "))}</td>'
            f'<td class="n">{_figure("rule-" + k, v, _num(v))}</td></tr>'
            for k, v in rec.rule_counts.items()
        ]
        parts.append(_table(("rule", "count"), rows, "narrow", "rule-counts"))
    return _section("gates", "Gates and rules", "".join(parts))


CSS = """
:root { --ink:#1f2933; --muted:#616e7c; --line:#e4e7eb; --bg:#f5f7fa; --accent:#3b6ea5; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--ink);
  font:14px/1.45 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
header { background:#1f2933; color:#fff; padding:18px 28px; }
header h1 { margin:0; font-size:20px; font-weight:600; }
header p { margin:4px 0 0; color:#cbd2d9; font-size:13px; }
nav { background:#fff; border-bottom:1px solid var(--line); padding:8px 28px; font-size:13px; }
nav a { color:var(--accent); margin-right:16px; text-decoration:none; }
main { max-width:980px; margin:0 auto; padding:8px 20px 40px; }
section { background:#fff; border:1px solid var(--line); border-radius:8px; padding:16px 22px;
  margin:16px 0; }
h2 { margin:0 0 10px; font-size:18px; }
h3 { margin:16px 0 6px; font-size:15px; }
h4 { margin:4px 0; font-size:13px; color:var(--muted); font-weight:600; }
img { display:block; max-width:100%; height:auto; margin:6px 0; }
table { border-collapse:collapse; width:100%; margin:6px 0 10px; font-size:13px; }
th { text-align:left; color:var(--muted); font-weight:600; border-bottom:2px solid var(--line);
  padding:4px 8px; }
td { border-bottom:1px solid var(--line); padding:4px 8px; vertical-align:top; }
td.n, th.n { text-align:right; font-variant-numeric:tabular-nums; white-space:nowrap; }
table.narrow { width:auto; min-width:50%; }
table.mini { font-size:12px; }
tr.served td { background:#f0f5fb; font-weight:600; }
.detail { color:var(--muted); font-size:12px; word-break:break-word; }
.sub { color:var(--muted); font-size:12px; font-weight:normal; }
.why { color:#2f6f4f; font-size:12px; }
.caption { color:var(--muted); font-size:12.5px; margin:4px 0 8px; }
.empty { color:var(--muted); font-style:italic; }
.note, .message { background:#fffbea; border-left:3px solid #d69e2e; padding:6px 10px; }
.cards { display:grid; grid-template-columns:repeat(auto-fill, minmax(200px, 1fr)); gap:10px; }
.card { border:1px solid var(--line); border-radius:6px; padding:8px 12px; }
.card .k { color:var(--muted); font-size:12px; }
.pair { display:grid; grid-template-columns:1fr 1fr; gap:18px; align-items:start; }
.sample { border-top:1px solid var(--line); padding-top:4px; }
dl.facts { display:grid; grid-template-columns:max-content 1fr; gap:2px 14px; margin:0 0 8px; }
dl.facts dt { color:var(--muted); }
dl.facts dd { margin:0; }
.badge { display:inline-block; padding:1px 8px; border-radius:10px; font-size:12px; color:#fff;
  background:#718096; }
.badge.succeeded { background:#2f855a; } .badge.failed { background:#c53030; }
.badge.interrupted { background:#d69e2e; } .badge.skipped { background:#a0aec0; }
.badge.running { background:#3182ce; }
footer { color:var(--muted); font-size:12px; text-align:center; padding:10px; }
@media (max-width: 760px) { .pair { grid-template-columns:1fr; } }
"""

SECTIONS = (
    ("summary", "At a glance"),
    ("steps", "Steps"),
    ("training", "Training"),
    ("quality", "Quality"),
    ("lists", "The lists"),
    ("samples", "Samples"),
    ("gates", "Gates and rules"),
)


def render(d: ReportData) -> str:
    """The whole page as one string."""
    nav = "".join(f'<a href="#{k}">{e(t)}</a>' for k, t in SECTIONS)
    body = "".join(
        (_summary(d), _steps(d), _training(d), _quality(d), _lists(d), _samples(d), _gates(d))
    )
    title = f"recsys pipeline run {d.run.id}: {d.run.status}"
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<style>{CSS}</style></head><body data-run="{d.run.id}">'
        f"<header><h1>{e(title)}</h1><p>started {e(_when(d.run.started_at))} · "
        f"trigger {e(d.run.trigger)} · report made {e(_when(d.generated_at))} "
        f"in {d.query_seconds:.2f} s of queries</p></header>"
        f"<nav>{nav}</nav><main>{body}</main>"
        "<footer>recsys nightly report · a static page: no scripts, nothing loaded from the "
        "network</footer></body></html>\n"
    )
