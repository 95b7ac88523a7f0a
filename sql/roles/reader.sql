-- A login role for apps that can read current_recommendations and current_similar_products
-- and nothing else.
-- `recsys db create-reader NAME` does the same; with psql (it prompts for the password and
-- sends only its SCRAM verifier, so the password is in neither `ps` nor the server log):
--   psql "$DATABASE_URL" -v name=shop_app -f sql/roles/reader.sql
-- The view runs with its owner's rights, so no grant on the tables behind it is needed.
CREATE ROLE :"name" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT;
\password :"name"
SELECT format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), :'name') \gexec
GRANT USAGE ON SCHEMA public TO :"name";
GRANT SELECT ON current_recommendations, current_similar_products TO :"name";
-- As the database's owner: no TEMP tables for the role, no connections for PUBLIC.
SELECT format('REVOKE CONNECT, TEMPORARY ON DATABASE %I FROM PUBLIC', current_database()) \gexec
