"""The read path: search and rerank."""
