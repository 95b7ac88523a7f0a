-- The recommendations apps read: each user's list from the published run only.
-- Created by alembic/versions/0004_recommendations.py, extended by 0006_rules.py (this file is
-- the current definition).
-- A reader sees the previous run until the switch commits, then the whole new run: the
-- pointer and the rows are read in one snapshot, so a list is never partial or empty.
--
--   user_external_id  the shop's user id (users.external_id)
--   rank              1 = best
--   asin              the product's shop id (products.external_id: asin, parent_asin, movie id)
--   title, brand      from products
--   score             strategy 'model' / 'cold_start': the model's ranking score after boosts
--                     (higher is better); 'popularity' / 'category_popularity': the product's
--                     number of ratings times its boost factor
--   strategy          model | cold_start | popularity | category_popularity
--   generated_at      when the published run was scored
--   reason            why the row is there, ready to show: 'because you rated <title>',
--                     'similar to <title>', 'popular in <category>', 'popular',
--                     'recommended for you' (a model row with no rated product to name)
--   because_asin      the rated product the reason names (NULL for fallback rows)
--   because_title     its title
CREATE VIEW current_recommendations AS
SELECT u.external_id AS user_external_id,
       r.rank,
       p.external_id AS asin,
       p.title,
       p.brand,
       r.score,
       r.strategy,
       rr.generated_at,
       CASE WHEN b.id IS NULL THEN r.reason
            ELSE r.reason || ' ' || coalesce(b.title, b.external_id) END AS reason,
       b.external_id AS because_asin,
       b.title AS because_title
FROM published_recommendations pub
JOIN recommendation_runs rr ON rr.id = pub.run_id
JOIN recommendations r ON r.run_id = pub.run_id
JOIN users u ON u.id = r.user_id
JOIN products p ON p.id = r.product_id
LEFT JOIN products b ON b.id = r.because_product_id;
