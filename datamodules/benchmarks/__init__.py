"""Benchmarks: one file each, a `Benchmark` subclass that scores a `ClipScorer` and reports chance levels."""
