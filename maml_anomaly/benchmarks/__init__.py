"""Benchmarks: commands that measure and print their figures."""
