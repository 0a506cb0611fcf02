"""The library on disk: SQLite metadata (SQLAlchemy) and FAISS vector stores."""
