"""Recall@k as pure functions and the benchmarks built on them."""
