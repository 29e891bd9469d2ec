"""Offline engine benchmarks: deltaserve's engine against HF PEFT on workload W (see README.md)."""
