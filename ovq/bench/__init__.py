"""Benchmarks (not tests): each prints a table and saves its figures as JSON under results/."""
