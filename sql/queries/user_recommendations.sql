-- One user's current list, best first.
--   psql "$DATABASE_URL" -v user="'A1B2C3'" -f sql/queries/user_recommendations.sql
SELECT rank, asin, title, brand, score, strategy, generated_at
FROM current_recommendations
WHERE user_external_id = :user
ORDER BY rank;
