"""A load that commits while a run is scoring: the run reads one snapshot, the next run sees it.

Documented choice (README "Rules", recsys.scoring.score): every read of a scoring run happens in
one REPEATABLE READ transaction, so a rating committed during scoring is not masked by that run
and a user added during it gets no list; the next run masks and lists them.
"""

from __future__ import annotations

import sqlalchemy as sa
from test_nightly_support import add_catalogue, trained_model

from recsys.scoring.score import ScoreOptions, score_and_write


def test_a_load_committed_while_scoring_waits_for_the_next_run(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        add_catalogue(conn, n_users=40, n_products=60, n_ratings=500, seed=2)
        model = trained_model(conn)
    first = score_and_write(engine, model, ScoreOptions(k=5, batch_users=4))
    last_user = int(model.user_ids[-1])  # scored in the last model batch
    with engine.connect() as conn:
        top = conn.execute(
            sa.text(
                "SELECT product_id FROM recommendations WHERE run_id = :r AND user_id = :u "
                "AND rank = 1"
            ),
            {"r": first.run_id, "u": last_user},
        ).scalar_one()
    loaded: list[int] = []

    def load_during_scoring(done: int, total: int) -> None:
        if loaded:
            return
        with engine.begin() as other:  # another connection: committed at once
            other.execute(
                sa.text(
                    "INSERT INTO ratings (user_id, product_id, rating, rated_at) "
                    "VALUES (:u, :p, 5, now())"
                ),
                {"u": last_user, "p": top},
            )
            other.execute(sa.text("INSERT INTO users (external_id) VALUES ('arrived')"))
        loaded.append(done)

    during = score_and_write(
        engine, model, ScoreOptions(k=5, batch_users=4), progress=load_during_scoring
    )
    assert loaded and loaded[0] < during.n_users  # the load committed mid-run
    after = score_and_write(engine, model, ScoreOptions(k=5, batch_users=4))
    with engine.connect() as conn:
        listed = [
            conn.execute(
                sa.text(
                    "SELECT count(*) FROM recommendations WHERE run_id = :r AND user_id = :u "
                    "AND product_id = :p"
                ),
                {"r": run_id, "u": last_user, "p": top},
            ).scalar_one()
            for run_id in (during.run_id, after.run_id)
        ]

        new_user_rows = [
            conn.execute(
                sa.text(
                    "SELECT count(*) FROM recommendations r JOIN users u ON u.id = r.user_id "
                    "WHERE r.run_id = :r AND u.external_id = 'arrived'"
                ),
                {"r": run_id},
            ).scalar_one()
            for run_id in (during.run_id, after.run_id)
        ]
        rated_listed = conn.execute(
            sa.text(
                "SELECT count(*) FROM recommendations r JOIN ratings x ON x.user_id = r.user_id "
                "AND x.product_id = r.product_id WHERE r.run_id = :r"
            ),
            {"r": after.run_id},
        ).scalar_one()
    # the run that was scoring saw the database as of its start ...
    assert listed[0] == 1 and new_user_rows[0] == 0
    # ... and the next run masks the new rating and lists the new user
    assert listed[1] == 0 and rated_listed == 0 and new_user_rows[1] == 5
