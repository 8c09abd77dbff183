python -m convkit.bench --interleave --report benchmarks/results --readme README.md
