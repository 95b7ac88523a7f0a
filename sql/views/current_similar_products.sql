-- Item-to-item lists for product pages: per product its top 20 similar products from the
-- published build only. Created by alembic/versions/0006_rules.py (this file is the current
-- definition). The pointer and the rows are read in one snapshot, like current_recommendations.
--
--   asin           the product the list is for
--   kind           'text' (cosine of text vectors) or 'co_rating' (cosine of the rater sets)
--   rank           1 = most similar
--   similar_asin, similar_title, similar_brand   the similar product (available ones only)
--   score          the cosine similarity
--   generated_at   when the published build was made
CREATE VIEW current_similar_products AS
SELECT p.external_id AS asin,
       s.kind,
       s.rank,
       q.external_id AS similar_asin,
       q.title AS similar_title,
       q.brand AS similar_brand,
       s.score,
       sr.generated_at
FROM published_similar_products pub
JOIN similar_product_runs sr ON sr.id = pub.run_id
JOIN similar_products s ON s.run_id = pub.run_id
JOIN products p ON p.id = s.product_id
JOIN products q ON q.id = s.similar_product_id
WHERE q.available;
