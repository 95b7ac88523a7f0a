-- Per-user exclusions: the pair never appears in the user's list while until is NULL (forever)
-- or in the future. asin must be in products (foreign key): an unknown asin is rejected.
INSERT INTO user_exclusions (user_external_id, asin, reason, until)
VALUES ('A2SUAM1J3GNN3B', 'B00EXAMPLE', 'returned', NULL);

-- dismissed for 30 days
INSERT INTO user_exclusions (user_external_id, asin, reason, until)
VALUES ('A2SUAM1J3GNN3B', 'B00OTHER', 'dismissed', now() + interval '30 days');

-- exclusions in force now
SELECT user_external_id, asin, reason, until FROM user_exclusions
WHERE until IS NULL OR until > now();
