"""History: what counts as a change, snapshot de-duplication, unreadable files."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from board_synthetic import cell

from qsens.board import history as hist

T0 = datetime(2026, 11, 22, tzinfo=timezone.utc)


def _snap(cells, day=0):
    return {**hist.snapshot(cells, ["r"], T0 + timedelta(days=day)), "file": f"{day}.json"}


def test_change_beyond_intervals_is_significant_within_is_not():
    a = cell("f", None, 100, 1000, 4.0, 4, 0.020)  # Δloss CI ±0.002
    far = {**a, "delta_loss": 0.030, "delta_loss_ci_low": 0.027, "delta_loss_ci_high": 0.033}
    near = {**a, "delta_loss": 0.021, "delta_loss_ci_low": 0.019, "delta_loss_ci_high": 0.023}
    (c,) = [c for c in hist.diff(_snap([a]), _snap([far], 1)) if c.get("metric") == "delta_loss"]
    assert c["change"] == 0.030 - 0.020 and c["significant"] and c["old"] == 0.020 and c["new"] == 0.030
    (c,) = [c for c in hist.diff(_snap([a]), _snap([near], 1)) if c.get("metric") == "delta_loss"]
    assert not c["significant"]


def test_round_off_is_not_a_change():
    a = cell("f", None, 100, 1000, 4.0, 4, 0.020)
    b = {**a, "delta_loss": 0.020 * (1 + 1e-13)}
    assert hist.diff(_snap([a]), _snap([b], 1)) == []


def test_status_added_removed_and_key_change():
    a, b = cell("f", None, 100, 1000, 4.0, 4, 0.02), cell("f", None, 100, 2000, 4.0, 4, 0.03)
    failed = {**a, "status": "failed", "key": "new-key"}
    kinds = {(c["id"].split("|")[3], c["kind"]) for c in hist.diff(_snap([a]), _snap([failed, b], 1))}
    assert (a["checkpoint"], "status") in kinds and (b["checkpoint"], "added") in kinds
    assert {c["kind"] for c in hist.diff(_snap([a, b]), _snap([a], 1))} == {"removed"}


def test_identical_cells_add_no_snapshot(tmp_path):
    cells = [cell("f", None, 100, 1000, 4.0, 4, 0.02)]
    h = hist.add_snapshot(tmp_path, hist.snapshot(cells, ["r"], T0), [])
    h = hist.add_snapshot(tmp_path, hist.snapshot(cells, ["r"], T0 + timedelta(days=1)), h)
    assert len(h) == 1 and len(list(tmp_path.glob("*.json"))) == 1
    changed = [{**cells[0], "delta_loss": 0.05}]
    h = hist.add_snapshot(tmp_path, hist.snapshot(changed, ["r"], T0 + timedelta(days=2)), h)
    snaps, bad = hist.read_history(tmp_path)
    assert len(h) == len(snaps) == 2 and bad == []
    (t,) = hist.transitions(snaps)
    (c,) = [c for c in t["changes"] if c.get("metric") == "delta_loss"]
    assert (c["old"], c["new"]) == (0.02, 0.05)
    assert hist.last_changes([t])[(hist.cell_id(cells[0]), "delta_loss")] is c


def test_unreadable_snapshot_is_reported_not_fatal(tmp_path):
    (tmp_path / "broken.json").write_text("{")
    (tmp_path / "other.json").write_text('{"format": 99}')
    assert hist.read_history(tmp_path) == ([], ["broken.json", "other.json"])


def test_running_cells_are_not_in_snapshots():
    running = {**cell("f", None, 100, 1000, 4.0, 4, 0.02), "status": "running"}
    assert hist.snapshot([running], ["r"], T0)["cells"] == {}
