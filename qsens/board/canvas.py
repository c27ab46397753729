"""What every board plot module draws with (qsens.board.plots, .pareto, .layers): matplotlib on the Agg backend with
deterministic SVG output, the series colours, text made safe for mathtext, the common finish of an axis, and one
plot attempted so that its failure is recorded for its page instead of failing the site."""

from __future__ import annotations

from pathlib import Path

from qsens.errors import error_text

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f")


def safe(text) -> str:
    """Text for matplotlib: `$` would start mathtext (and can raise on odd input), so it is escaped."""
    return str(text).replace("$", r"\$")


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Text stays text (small files); a fixed hash salt makes ids, and so rebuilt files, deterministic.
    plt.rcParams.update({"svg.fonttype": "none", "svg.hashsalt": "qsens-board", "font.size": 9})
    return plt


def save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="svg", bbox_inches="tight", metadata={"Date": None})
    import matplotlib.pyplot as plt

    plt.close(fig)


def finish(fig, ax, path: Path, xlabel: str, ylabel: str, title: str, legend_size: int) -> None:
    """Labels, title, grid and legend of a plot; then write it."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(safe(title))
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=legend_size)
    save(fig, path)


def attempt(kind: str, title: str, rel: str, site: Path, draw) -> dict:
    """Run one plot; on failure record the error for the page instead of failing the build."""
    try:
        caption = draw(site / rel)
        return {"kind": kind, "title": title, "file": rel, "caption": caption, "error": None}
    except Exception as exc:  # noqa: BLE001 - one bad plot must not cost the whole site
        return {"kind": kind, "title": title, "file": None, "caption": "",
                "error": error_text(exc)}
