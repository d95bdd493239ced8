"""Command-line tools of the project (migrations, load generation, benchmarks)."""
