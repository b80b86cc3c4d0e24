"""Benchmarks: each prints a table and ends with a one-line JSON summary."""
