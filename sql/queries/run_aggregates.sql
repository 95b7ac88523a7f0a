-- The per-product counts each recommendation run stores with its rows
-- (recommendation_product_counts, written by scoring in the rows' transaction; migration 0007):
-- the report's list figures without scanning the run's rows. Runs written before 0007 have
-- none (list_stats IS NULL). Tables, not views: run as the recsys owner, not the reader role.

-- 1. the 20 products in the most lists of the published run: lists at rank 1, mean rank and
--    popularity percentile (0..100 among rated products) when the run was scored.
SELECT p.external_id                                 AS asin,
       p.title,
       c.n_users                                     AS users,
       c.n_first                                     AS at_rank_1,
       round(c.rank_sum::numeric / c.n_users, 2)     AS mean_rank,
       round((100 * c.popularity_pct)::numeric, 1)   AS popularity_pct
FROM published_recommendations pub
JOIN recommendation_product_counts c ON c.run_id = pub.run_id
JOIN products p ON p.id = c.product_id
ORDER BY c.n_users DESC, p.external_id
LIMIT 20;

-- 2. catalogue coverage of every kept run, as stored when it was scored.
SELECT r.id                                          AS run_id,
       r.status,
       r.n_rows,
       (r.list_stats ->> 'products')::bigint         AS products_recommended,
       (r.list_stats ->> 'catalogue')::bigint        AS catalogue,
       round((r.list_stats ->> 'products')::numeric
             / nullif((r.list_stats ->> 'catalogue')::numeric, 0), 4) AS coverage
FROM recommendation_runs r
WHERE r.list_stats IS NOT NULL
ORDER BY r.id DESC;
