"""Micro-benchmarks behind `qsens bench` (each module: `run(...) -> dict` data, `to_markdown(data)`)."""
