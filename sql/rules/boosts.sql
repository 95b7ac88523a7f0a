-- Boosts: a factor > 0 on a product's score while valid_from <= now() < valid_until (NULL
-- bounds are open; several valid rows of one product multiply). Ranking scores (the ranker's
-- logits) become score + ln(factor), rating scores (predicted ratings) score * factor,
-- fallback scores (number of ratings) count * factor. asin must be in products.
INSERT INTO product_boosts (asin, factor, valid_from, valid_until)
VALUES ('B00EXAMPLE', 1.5, now(), now() + interval '7 days');

-- demote a product (factor < 1)
INSERT INTO product_boosts (asin, factor) VALUES ('B00OTHER', 0.5);

-- boosts in force now
SELECT asin, factor, valid_from, valid_until FROM product_boosts
WHERE (valid_from IS NULL OR valid_from <= now()) AND (valid_until IS NULL OR valid_until > now());
