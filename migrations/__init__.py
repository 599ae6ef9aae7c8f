"""gammadb's alembic migrations (installed as ``gammadb.migrations``)."""

#: The newest revision in versions/. Opening a store compares its stored revision with this constant
#: in plain SQL, so a store that is up to date is opened without importing alembic (0.15 s);
#: tests/store/test_versioning.py checks that it is alembic's one head.
HEAD_REVISION = "0006"
