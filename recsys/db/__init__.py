"""Database access: engine and embedded server, tables, COPY helpers, advisory locks."""
