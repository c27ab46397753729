"""The static results site (`qsens board`): data (read results) → model (site as a dict) → plots and pages.

    data.py     cells, fits, runs and suites, read-only         history.py  snapshots and what changed
    fits.py     what the board shows of a stored fit           fmt.py      one number format per table column
    model.py    leaderboard rows, "which checkpoint", families  plots.py    matplotlib SVG files
    render.py   Jinja2 pages and leaderboard/cells exports      build.py    build aside, swap in (`build_board`)
"""
