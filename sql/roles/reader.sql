-- A login role for apps that can read current_recommendations and nothing else.
-- `recsys db create-reader NAME` does the same; with psql:
--   psql "$DATABASE_URL" -v name=shop_app -v password='...' -f sql/roles/reader.sql
-- The view runs with its owner's rights, so no grant on the tables behind it is needed.
CREATE ROLE :"name" WITH LOGIN PASSWORD :'password' NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT;
SELECT format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), :'name') \gexec
GRANT USAGE ON SCHEMA public TO :"name";
GRANT SELECT ON current_recommendations TO :"name";
