"""Results storage: one SQLite file per results folder, every table through `sqlite`.

    sqlite.py  the file: connect (read-write or read-only), migrate, read rows; DB_NAME, StoreError
    cells.py   the cells table (ResultStore: claim, save, read) and claim ownership
    runs.py    the runs table (nightly run records)
    fits.py    the fits and fit_comparisons tables (what qsens.fit computes)
    export.py  every cell as JSON or CSV, under stable field names
"""

from qsens.store.cells import ResultStore, read_cells
from qsens.store.sqlite import DB_NAME, StoreError

__all__ = ["DB_NAME", "ResultStore", "StoreError", "read_cells"]
