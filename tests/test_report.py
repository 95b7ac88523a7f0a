"""The nightly HTML report: made by every `recsys run`, its figures checked against SQL over the
same run, and the page rendered in a real headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from sqlalchemy.engine import make_url

from recsys.cli import cli
from recsys.config import Settings

SECTIONS = ("summary", "steps", "training", "quality", "lists", "samples", "gates")
K = 5


class Page(HTMLParser):
    """The parts of a report tests look at: sections, charts, figures, data rows."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.charts: dict[str, str] = {}
        self.figures: dict[str, str] = {}
        self.rows: dict[str, list[dict[str, str]]] = {}
        self.elements: list[tuple[str, dict[str, str]]] = []
        self._table: list[str | None] = []
        self.text_parts: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.elements.append((tag, a))
        if tag == "section":
            self.sections.append(a.get("id", ""))
        if tag == "img" and "data-chart" in a:
            self.charts[a["data-chart"]] = a.get("src", "")
        if "data-figure" in a:
            self.figures[a["data-figure"]] = a.get("data-value", "")
        if tag == "table":
            self._table.append(a.get("data-table"))
        if tag == "tr" and self._table and self._table[-1] and any(k[:5] == "data-" for k in a):
            self.rows.setdefault(self._table[-1], []).append(a)

    def handle_endtag(self, tag: str) -> None:
        if tag == "table" and self._table:
            self._table.pop()

    def handle_data(self, data: str) -> None:
        self.text_parts.append(data)

    @property
    def text(self) -> str:
        return " ".join(self.text_parts)

    def first(self, **attrs: str) -> dict[str, str]:
        for _, a in self.elements:
            if all(a.get(k.replace("_", "-")) == v for k, v in attrs.items()):
                return a
        raise AssertionError(f"no element with {attrs}")


def _inbox(path: Path, seed: int = 5) -> Path:
    from recsys.ingest.sample import write_sample

    files = write_sample(path, users=120, products=50, ratings=2000, seed=seed)
    files.truth_path.unlink()
    return path


def _run(env: dict[str, str], inbox: Path, *extra: str):
    """A real `recsys run` with the fastest model the command offers (closed-form biases)."""
    args = ["run", "--inbox", str(inbox), "--model", "bias", "--no-features"]
    args += ["--min-ratings", "0", "-k", str(K), *extra]
    return CliRunner().invoke(cli, args, env=env, catch_exceptions=False)


@pytest.fixture(scope="module")
def nightly(
    pg_admin_url: str, template_db: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict]:
    """Two real nightly runs on a small sample (some ratings removed in between)."""
    name = f"recsys_t_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(pg_admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"'))
    url = make_url(pg_admin_url).set(database=name).render_as_string(hide_password=False)
    base = tmp_path_factory.mktemp("report")
    # the closed-form bias model (the fastest) ranks below popularity on this sample, which the
    # NDCG gate would refuse to publish; the gates themselves are tested in test_rules
    env = {
        "RECSYS_DATABASE_URL": url,
        "RECSYS_HOME": str(base / "home"),
        "RECSYS_GATE_NDCG_RATIO_MIN": "0",
    }
    engine = sa.create_engine(url)
    inbox = _inbox(base / "inbox")
    first = _run(env, inbox)
    assert first.exit_code == 0, first.output
    with engine.begin() as conn:
        # the next night sees fewer ratings, so its lists differ somewhat from the first ones
        conn.execute(sa.text("DELETE FROM ratings WHERE (user_id * 7 + product_id) % 5 = 0"))
    second = _run(env, inbox)
    assert second.exit_code == 0, second.output
    with engine.connect() as conn:
        run_id = conn.execute(sa.text("SELECT max(id) FROM pipeline_runs")).scalar_one()
        rec_run = conn.execute(sa.text("SELECT max(id) FROM recommendation_runs")).scalar_one()
    path = base / "home" / "reports" / f"{run_id}.html"
    yield {
        "env": env,
        "engine": engine,
        "output": second.output,
        "path": path,
        "run_id": run_id,
        "rec_run": rec_run,
        "base": base,
    }
    engine.dispose()
    with admin.connect() as c:
        c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def test_every_run_writes_its_report_and_prints_the_path(nightly: dict) -> None:
    path: Path = nightly["path"]
    assert f"report: {path}" in nightly["output"]
    assert path.is_file() and (path.parent / f"{nightly['run_id'] - 1}.html").is_file()
    page = Page(path.read_text(encoding="utf-8"))
    assert page.sections == list(SECTIONS)
    for chart in ("steps-timeline", "steps-trend", "strategies", "popularity"):
        assert page.charts[chart].startswith("data:image/png;base64,"), chart
    text = path.read_text(encoding="utf-8")
    # self-contained: no script, nothing fetched from anywhere
    assert "<script" not in text.lower()
    assert not re.search(r"""(src|href)=["'](https?:)?//""", text)


def test_steps_and_trend_match_the_pipeline_tables(nightly: dict) -> None:
    page = Page(nightly["path"].read_text(encoding="utf-8"))
    with nightly["engine"].connect() as conn:
        steps = conn.execute(
            sa.text(
                "SELECT step, status, seconds FROM pipeline_steps WHERE pipeline_run_id = :r "
                "ORDER BY position"
            ),
            {"r": nightly["run_id"]},
        ).all()
    rows = page.rows["steps"]
    assert [(r["data-step"], r["data-status"]) for r in rows] == [(s, st) for s, st, _ in steps]
    assert [float(r["data-seconds"]) for r in rows] == pytest.approx([sec for *_, sec in steps])
    assert "The last 2 runs" in page.text


def test_list_figures_match_sql_over_the_same_run(nightly: dict) -> None:
    page = Page(nightly["path"].read_text(encoding="utf-8"))
    r = nightly["rec_run"]
    with nightly["engine"].connect() as conn:
        by_strategy = dict(
            conn.execute(
                sa.text(
                    "SELECT strategy, count(*) FROM recommendations WHERE run_id = :r AND rank = 1 "
                    "GROUP BY strategy"
                ),
                {"r": r},
            ).all()
        )
        n_rows, n_users, n_products = conn.execute(
            sa.text(
                "SELECT count(*), count(DISTINCT user_id), count(DISTINCT product_id) "
                "FROM recommendations WHERE run_id = :r"
            ),
            {"r": r},
        ).one()
        catalogue = conn.execute(sa.text("SELECT count(*) FROM products")).scalar_one()
        top = conn.execute(
            sa.text(
                "SELECT p.external_id, count(*) FROM recommendations r "
                "JOIN products p ON p.id = r.product_id WHERE r.run_id = :r "
                "GROUP BY p.external_id ORDER BY count(*) DESC, p.external_id LIMIT 20"
            ),
            {"r": r},
        ).all()
        recommended = conn.execute(
            sa.text("SELECT product_id FROM recommendations WHERE run_id = :r"), {"r": r}
        ).scalars()
        recommended = np.array(list(recommended))
        ratings_per_product = dict(
            conn.execute(
                sa.text("SELECT product_id, count(*) FROM ratings GROUP BY product_id")
            ).all()
        )
    assert {k: int(page.figures[f"strategy-{k}"]) for k in by_strategy} == by_strategy
    assert int(page.figures["rows"]) == n_rows == n_users * K
    assert int(page.figures["users"]) == n_users
    assert int(page.figures["products-recommended"]) == n_products
    assert int(page.figures["catalogue"]) == catalogue
    assert float(page.figures["coverage"]) == pytest.approx(n_products / catalogue)
    assert [(row["data-asin"], int(row["data-users"])) for row in page.rows["top-products"]] == [
        (asin, n) for asin, n in top
    ]
    # the popularity histogram, recomputed here the way ranking_metrics defines the percentile
    counts = np.array(sorted(ratings_per_product.values()))
    expected = [0] * 11
    for product in recommended:
        n = ratings_per_product.get(int(product))
        if n is None:
            expected[0] += 1
            continue
        pr = np.searchsorted(counts, n, side="left") / max(1, len(counts) - 1)
        expected[min(10, int(pr * 10) + 1)] += 1
    figure = page.first(data_chart_data="popularity")
    assert json.loads(figure["data-buckets"]) == expected
    assert float(page.figures["top-decile-share"]) == pytest.approx(expected[10] / n_rows)


def test_overlap_with_the_previous_run_matches_sql(nightly: dict) -> None:
    page = Page(nightly["path"].read_text(encoding="utf-8"))
    r = nightly["rec_run"]
    with nightly["engine"].connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT run_id, user_id, product_id FROM recommendations "
                "WHERE run_id IN (:r, :r - 1)"
            ),
            {"r": r},
        ).all()
    lists: dict[int, dict[int, set]] = {r - 1: {}, r: {}}
    for run, user, product in rows:
        lists[run].setdefault(user, set()).add(product)
    now, before = lists[r], lists[r - 1]
    shares = [len(now[u] & before[u]) / len(now[u]) for u in now if u in before]
    identical = sum(1 for u in now if before.get(u) == now[u])
    assert int(page.figures["overlap-users"]) == len(now)
    assert int(page.figures["overlap-users-with-previous"]) == len(shares)
    assert float(page.figures["overlap"]) == pytest.approx(float(np.mean(shares)))
    assert int(page.figures["overlap-identical"]) == identical
    assert 0 < float(page.figures["overlap"]) < 1  # the ratings removed changed some lists


def test_samples_show_five_users_rated_and_published_lists(nightly: dict) -> None:
    text = nightly["path"].read_text(encoding="utf-8")
    page = Page(text)
    users = [a["data-user"] for tag, a in page.elements if tag == "div" and "data-user" in a]
    assert len(users) == 5 and len(set(users)) == 5
    with nightly["engine"].connect() as conn:
        for user in users:
            published = conn.execute(
                sa.text(
                    "SELECT p.title FROM recommendations r JOIN users u ON u.id = r.user_id "
                    "JOIN products p ON p.id = r.product_id "
                    "WHERE r.run_id = :r AND u.external_id = :u ORDER BY r.rank"
                ),
                {"r": nightly["rec_run"], "u": user},
            ).scalars()
            block = text.split(f'data-user="{user}"', 1)[1].split('class="sample"', 1)[0]
            titles = re.findall(
                r'data-rank="\d+" data-asin="[^"]*"><td class="n">\d+</td><td>([^<]*)', block
            )
            assert titles == list(published)
    # the same seed draws the same users
    again = CliRunner().invoke(
        cli, ["report", "--out", str(nightly["base"] / "again.html")], env=nightly["env"]
    )
    assert again.exit_code == 0, again.output
    again_page = Page((nightly["base"] / "again.html").read_text(encoding="utf-8"))
    assert [a["data-user"] for t, a in again_page.elements if "data-user" in a] == users


def _metric_cells(text: str, split: str, model: str) -> dict[str, str]:
    row = re.search(
        rf'<tr[^>]*data-split="{re.escape(split)}" data-model="{re.escape(model)}">(.*?)</tr>', text
    )
    assert row, (split, model)
    return dict(re.findall(r'data-metric="([^"]+)" data-value="([^"]*)"', row.group(1)))


def test_quality_shows_stored_metrics_and_says_not_measured(nightly: dict) -> None:
    text = nightly["path"].read_text(encoding="utf-8")
    with nightly["engine"].connect() as conn:
        metrics = conn.execute(
            sa.text("SELECT metrics FROM model_runs ORDER BY id DESC LIMIT 1")
        ).scalar_one()
    served = _metric_cells(text, "rank (80/20)", "bias")
    for key in ("ndcg@10", "recall@10", "coverage@10", "popularity_percentile"):
        assert float(served[key]) == pytest.approx(metrics["rank"][key]), key
    assert float(_metric_cells(text, "seed (70/30)", "bias")["rmse"]) == pytest.approx(
        metrics["seed"]["rmse"]
    )
    # popularity on the same rank split, stored with the run beside the model's figures
    popularity = _metric_cells(text, "rank (80/20)", "popularity")
    for key in ("ndcg@10", "recall@10", "coverage@10"):
        assert float(popularity[key]) == pytest.approx(metrics["rank"][f"popularity_{key}"]), key
    # what popularity has no figure for is said, not invented
    assert popularity["popularity_percentile"] == ""
    assert "not measured" in Page(text).text


def _main(args: list[str], env: dict[str, str], monkeypatch, capsys) -> tuple[int, list[str]]:
    from recsys.cli import main

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SystemExit) as exited:
        main(args)
    lines = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    return int(exited.value.code), lines


def test_report_of_a_failed_run_and_one_line_errors(
    cli_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    code, lines = _main(["report"], cli_env, monkeypatch, capsys)
    assert code == 2 and lines == [
        "recsys: error: no pipeline runs recorded yet; run `recsys run` first"
    ]
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "notes.bin").write_bytes(b"\x00\x01 not a ratings file")
    args = ["run", "--inbox", str(bad), "--model", "bias", "--no-features"]
    code, lines = _main(args, cli_env, monkeypatch, capsys)
    assert code == 2 and len(lines) == 1 and "unknown format" in lines[0]
    path = Path(cli_env["RECSYS_HOME"]) / "reports" / "1.html"
    page = Page(path.read_text(encoding="utf-8"))
    assert page.sections == list(SECTIONS)
    assert page.first(data_step="load")["data-status"] == "failed"
    assert page.first(data_step="publish")["data-status"] == "skipped"
    assert "this run scored no lists" in page.text and "unknown format" in page.text
    code, lines = _main(["report", "--run", "7"], cli_env, monkeypatch, capsys)
    assert code == 2 and lines == ["recsys: error: no pipeline run 7 (see `recsys run --history`)"]


def test_a_report_failure_does_not_fail_the_run(
    engine: sa.Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    from test_nightly_support import add_catalogue
    from test_pipeline import _steps

    from recsys.pipeline import run
    from recsys.report import render as render_module

    with engine.begin() as conn:
        add_catalogue(conn, n_users=15, n_products=20, n_ratings=120, seed=4)

    def broken(_data):
        raise RuntimeError("disk full")

    monkeypatch.setattr(render_module, "render", broken)
    result = run(engine, settings, steps=_steps())
    assert result.status == "succeeded" and result.report_path is None
    assert "no report written: RuntimeError: disk full" in caplog.text


def test_gates_rules_and_reasons_of_a_run(engine: sa.Engine, settings: Settings) -> None:
    """The run's gates, rule counts and row reasons, as the nightly run recorded them."""
    from test_nightly_support import add_catalogue
    from test_pipeline import _steps

    from recsys.pipeline import run
    from recsys.report import write_report

    with engine.begin() as conn:
        add_catalogue(conn, n_users=15, n_products=20, n_ratings=120, seed=4)
    result = run(engine, settings, steps=_steps())
    page = Page(result.report_path.read_text(encoding="utf-8"))
    with engine.connect() as conn:
        stored = conn.execute(
            sa.text("SELECT gates, rule_counts FROM recommendation_runs ORDER BY id DESC LIMIT 1")
        ).one()
    assert page.figures["gates-passed"] == str(stored.gates["passed"])
    assert [(r["data-gate"], r["data-passed"]) for r in page.rows["gates"]] == [
        (c["gate"], str(c["passed"])) for c in stored.gates["checks"]
    ]
    assert {k: int(page.figures[f"rule-{k}"]) for k in stored.rule_counts} == stored.rule_counts

    # a forced run with failed gates, and reasons with markup in them
    gates = {
        "passed": False,
        "forced": True,
        "checks": [
            {"gate": "coverage", "value": 0.4, "min": 0.5, "max": None, "passed": False},
            {"gate": "ndcg_vs_popularity", "value": 1.2, "min": 1.0, "max": None, "passed": True},
        ],
    }
    rules = {"unavailable": 3, "excluded": 1, "category_cap": 7, "brand_cap": 0, "boosted": 2}
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE recommendation_runs SET gates = CAST(:g AS jsonb), "
                "rule_counts = CAST(:c AS jsonb)"
            ),
            {"g": json.dumps(gates), "c": json.dumps(rules)},
        )
        conn.execute(
            sa.text(
                "UPDATE recommendations SET reason = '<b>similar</b> to what you rated', "
                "because_product_id = (SELECT min(id) FROM products)"
            )
        )
        because = conn.execute(
            sa.text("SELECT title FROM products ORDER BY id LIMIT 1")
        ).scalar_one()
    path = write_report(engine, settings.home, result.run_id)
    text = path.read_text(encoding="utf-8")
    page = Page(text)
    assert page.figures["gates-passed"] == "False"
    assert [(r["data-gate"], r["data-passed"]) for r in page.rows["gates"]] == [
        ("coverage", "False"),
        ("ndcg_vs_popularity", "True"),
    ]
    assert {k: int(page.figures[f"rule-{k}"]) for k in rules} == rules
    assert "published with --force" in page.text
    assert "&lt;b&gt;similar&lt;/b&gt; to what you rated" in text  # escaped, never markup
    assert f"because of {because}" in page.text


def test_internal_and_auto_metrics_beside_popularity(engine: sa.Engine, settings: Settings) -> None:
    from test_nightly_support import add_catalogue
    from test_pipeline import _steps

    from recsys.pipeline import run
    from recsys.report import write_report

    with engine.begin() as conn:
        add_catalogue(conn, n_users=15, n_products=20, n_ratings=120, seed=4)
    result = run(engine, settings, steps=_steps())
    with engine.begin() as conn:
        # the most recommended product gets a title that would be markup if not escaped
        conn.execute(
            sa.text(
                "UPDATE products SET title = '<script>x</script> & co' WHERE id = "
                "(SELECT product_id FROM recommendations GROUP BY product_id "
                "ORDER BY count(*) DESC, product_id LIMIT 1)"
            )
        )
    metrics = {
        "internal": {"ndcg@10": 0.31, "popularity_ndcg@10": 0.12, "seed": 0},
        "auto": {
            "chosen": "ease",
            "candidates": [
                {"model": "ranker", "ndcg@10": 0.29, "fit_seconds": 12.5},
                {"model": "ease", "ndcg@10": 0.31, "fit_seconds": 1.5},
            ],
        },
    }
    history = {"train_loss": [3.0, 2.0, 1.5], "val_ndcg": [[1, 0.2], [2, 0.25], [3, 0.24]]}
    with engine.begin() as conn:
        model_run = conn.execute(
            sa.text(
                "INSERT INTO model_runs (model_type, status, metrics, history) VALUES "
                "('ease', 'failed', CAST(:m AS jsonb), CAST(:h AS jsonb)) RETURNING id"
            ),
            {"m": json.dumps(metrics), "h": json.dumps(history)},
        ).scalar_one()
        conn.execute(sa.text("UPDATE recommendation_runs SET model_run_id = :m"), {"m": model_run})
    text = write_report(engine, settings.home, result.run_id).read_text(encoding="utf-8")
    page = Page(text)
    rows = {(r["data-split"], r["data-model"]) for r in page.rows["quality"]}
    assert rows == {
        ("train-internal", "ease"),
        ("train-internal", "popularity"),
        ("--model auto", "ranker"),
        ("--model auto", "ease (chosen)"),
    }
    assert "quality-ndcg" in page.charts and "training-loss" in page.charts
    assert "training-ndcg" in page.charts
    assert "<script" not in text and "&lt;script&gt;x&lt;/script&gt; &amp; co" in text


def test_ndcg_points_reads_the_recorded_shapes() -> None:
    from recsys.report.render import ndcg_points

    assert ndcg_points({"val_ndcg": [0.1, 0.2]}, {"eval_every": 5}) == [(5.0, 0.1), (10.0, 0.2)]
    assert ndcg_points({"val_ndcg": [0.1, 0.2], "val_ndcg_epochs": [3, 9]}) == [
        (3.0, 0.1),
        (9.0, 0.2),
    ]
    assert ndcg_points({"evaluations": [{"epoch": 4, "ndcg@10": 0.3}]}) == [(4.0, 0.3)]
    assert ndcg_points({"train_loss": [1.0]}) == []


# --- in a real browser ---------------------------------------------------------------------

PROBE = """<script>
window.addEventListener("load", function () {
  var out = {images: [], sections: []};
  document.querySelectorAll("img").forEach(function (img) {
    out.images.push([img.getAttribute("data-chart"), img.complete, img.naturalWidth,
                     img.naturalHeight]);
  });
  document.querySelectorAll("section").forEach(function (s) {
    out.sections.push([s.id, Math.round(s.getBoundingClientRect().height)]);
  });
  var pre = document.createElement("pre");
  pre.id = "probe";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def test_report_renders_in_headless_chromium(nightly: dict, tmp_path: Path) -> None:
    browser = _chromium()
    if browser is None:
        pytest.skip(
            "chromium is not installed: the browser check of the HTML report did not run "
            "(apt-get install chromium; make test installs it when run as root)"
        )
    page = nightly["path"]
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    shot = tmp_path / "report.png"
    subprocess.run(
        [*flags, f"--screenshot={shot}", "--window-size=1200,2400", page.as_uri()],
        check=True,
        capture_output=True,
        timeout=120,
    )
    from PIL import Image

    with Image.open(shot) as image:
        assert image.size == (1200, 2400)
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colours is not None and len(colours) > 200  # drawn, not a blank page

    probed = tmp_path / "probed.html"
    probed.write_text(
        page.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8"
    )
    dom = subprocess.run(
        [*flags, "--dump-dom", "--virtual-time-budget=10000", probed.as_uri()],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert found, dom[-2000:]
    result = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert [s[0] for s in result["sections"]] == list(SECTIONS)
    assert all(height > 40 for _, height in result["sections"])
    charts = {name for name, *_ in result["images"]}
    assert {"steps-timeline", "steps-trend", "strategies", "popularity"} <= charts
    for name, complete, width, height in result["images"]:
        assert complete and width > 100 and height > 50, (name, width, height)
