-- Coverage of the published run.
-- 1. by strategy: users whose list starts with it, rows, distinct products recommended.
SELECT strategy,
       count(*) FILTER (WHERE rank = 1) AS users_first,
       count(*)                         AS rows,
       count(DISTINCT asin)             AS distinct_products
FROM current_recommendations
GROUP BY strategy
ORDER BY rows DESC;

-- 2. the share of users served and of the catalogue that appears in at least one list
--    (reads users and products: run it as the recsys owner, not as the reader role).
SELECT count(DISTINCT user_external_id)                                AS users_served,
       (SELECT count(*) FROM users)                                    AS users_in_database,
       count(DISTINCT asin)                                            AS products_recommended,
       (SELECT count(*) FROM products)                                 AS products_in_catalogue,
       round(count(DISTINCT asin)::numeric
             / nullif((SELECT count(*) FROM products), 0), 4)          AS catalogue_coverage
FROM current_recommendations;
