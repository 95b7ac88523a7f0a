-- Availability: a product with available = false appears in no list from the next run on
-- (model lists, fallback lists, similar products). In bulk: recsys load-db --availability FILE
-- (CSV asin,available; unknown asins reject the whole file).
UPDATE products SET available = false WHERE external_id = 'B00EXAMPLE';

-- back in stock
UPDATE products SET available = true WHERE external_id = 'B00EXAMPLE';

-- what is out of stock now
SELECT external_id AS asin, title FROM products WHERE NOT available ORDER BY external_id;
