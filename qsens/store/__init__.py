"""Results storage: SQLite cells (`db`), cell keys (`keys`), exports (`export`)."""

from qsens.store.db import ResultStore

__all__ = ["ResultStore"]
