"""dualnorm's benchmark suite: ``python -m benchmarks`` (see ``python -m benchmarks --help``)."""
