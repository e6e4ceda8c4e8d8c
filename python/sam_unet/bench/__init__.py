"""Benchmark suite behind ``sam-unet bench`` and the scripts in benchmarks/."""
