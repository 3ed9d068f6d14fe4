"""Per-flow benchmarks: `python -m shopstream.benchmarks.<flow>`."""
