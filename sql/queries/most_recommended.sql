-- The products recommended to the most users in the published run, with their mean rank.
SELECT asin, title, brand,
       count(*)                     AS users,
       round(avg(rank)::numeric, 2) AS mean_rank
FROM current_recommendations
GROUP BY asin, title, brand
ORDER BY users DESC, asin
LIMIT 20;
