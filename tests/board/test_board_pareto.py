"""Quality against size: the Pareto front against a brute-force dominance check, and the plot a family page gets
(Δloss and KL vs effective bits, every sized method of the headline checkpoint, noise left out)."""

from __future__ import annotations

import numpy as np
from board_synthetic import cell

from qsens.board.pareto import pareto_front, size_quality_plot
from qsens.board.plots import family_plots


def _dominated(i, bits, values) -> bool:
    return any(bits[j] <= bits[i] and values[j] <= values[i] and (bits[j] < bits[i] or values[j] < values[i])
               for j in range(len(bits)))


def test_front_is_exactly_the_undominated_points():
    rng = np.random.default_rng(0)
    for trial in range(200):
        n = int(rng.integers(1, 25))
        bits = list(rng.choice([2.5, 3.0, 4.5, 4.625, 5.0, 8.5], size=n))  # ties in bits, as real settings have
        values = list(np.round(rng.exponential(size=n), 1))  # and ties in value
        front = pareto_front(bits, values)
        undominated = {i for i in range(n) if not _dominated(i, bits, values)}
        # among exact duplicates (same bits and value) the front keeps one
        assert {(bits[i], values[i]) for i in front} == {(bits[i], values[i]) for i in undominated}, trial
        assert set(front) <= undominated and [bits[i] for i in front] == sorted(bits[i] for i in front)


def _method_cells():
    rows = []
    for method, bits, delta in (("rtn", 4.625, 0.08), ("gptq", 4.625, 0.05), ("hqq", 4.5, 0.06), ("hqq", 5.0, 0.04),
                                ("bnb", 4.5, 0.07), ("torchao", 8.5, -0.001), ("noise", 32.0, 0.02)):
        c = cell("fam", "cosine", 10**6, 10**8, 3.0, 4, delta, method=method, effective_bits=bits,
                 quantizer=f"{method}-{bits}")
        rows.append(c)
    return rows


def test_plot_marks_the_front_and_leaves_out_noise(tmp_path):
    caption = size_quality_plot(_method_cells(), "delta_loss", "t", tmp_path / "p.svg")
    svg = (tmp_path / "p.svg").read_text()
    assert "Pareto front" in svg and "<svg" in svg
    # front by hand: hqq 4.5 (0.06) < bnb 4.5 (0.07); gptq 4.625 (0.05); hqq 5.0 (0.04); torchao 8.5 (-0.001)
    assert "Pareto front (point estimates): hqq-4.5, gptq-4.625, hqq-5.0, torchao-8.5" in caption
    assert "noise" in caption and "1 setting(s) with delta_loss ≤ 0" in caption


def test_family_page_gets_size_plots_for_delta_and_kl(tmp_path):
    plots = family_plots("fam", _method_cells(), [], tmp_path)
    size = {p["kind"]: p for p in plots if p["kind"].startswith("size-")}
    assert set(size) == {"size-delta_loss", "size-kl"}
    assert all(p["error"] is None and (tmp_path / p["file"]).is_file() for p in size.values())
