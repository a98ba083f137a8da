"""Storage: SQLAlchemy 2 models, queries and migrations. No commits in here:
services own the transaction."""
