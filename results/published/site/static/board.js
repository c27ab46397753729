// qsens board: sort tables by clicking a heading, filter rows by the selects, show one metric's columns.
// Plain script, no library and no network: the site must work from file:// and any static host.
"use strict";

// Cell value for sorting: the raw number in data-sort when present, else the text.
function sortKey(cell, numeric) {
  const raw = cell && cell.dataset.sort !== undefined ? cell.dataset.sort : (cell ? cell.textContent.trim() : "");
  if (!numeric) return raw.toLowerCase();
  const x = parseFloat(raw);
  return Number.isFinite(x) ? x : null;  // null: missing, always sorted last
}

function sortTable(table, th) {
  const idx = th.cellIndex;
  const numeric = th.dataset.sort === "num";
  const ascending = th.getAttribute("aria-sort") !== "ascending";
  table.querySelectorAll("thead th").forEach((h) => h.removeAttribute("aria-sort"));
  th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
  const body = table.tBodies[0];
  const rows = Array.from(body.rows).map((row, i) => ({ row, i, key: sortKey(row.cells[idx], numeric) }));
  rows.sort((a, b) => {
    if (a.key === null || b.key === null) return (a.key === null) - (b.key === null) || a.i - b.i;
    const c = a.key < b.key ? -1 : a.key > b.key ? 1 : 0;
    return (ascending ? c : -c) || a.i - b.i;  // stable: ties keep their order
  });
  rows.forEach((r) => body.appendChild(r.row));
}

function initSorting() {
  document.querySelectorAll("table.sortable").forEach((table) => {
    table.querySelectorAll("thead th[data-sort]").forEach((th) => {
      th.tabIndex = 0;
      th.addEventListener("click", () => sortTable(table, th));
      th.addEventListener("keydown", (e) => { if (e.key === "Enter") sortTable(table, th); });
    });
  });
}

function applyFilters() {
  const active = Array.from(document.querySelectorAll("select[data-filter]"))
    .filter((s) => s.value !== "").map((s) => [s.dataset.filter, s.value]);
  let shown = 0, total = 0;
  document.querySelectorAll("table.filterable").forEach((table) => {
    Array.from(table.tBodies[0].rows).forEach((row) => {
      // A table without a column for a filter (no such attribute on its rows) ignores that filter.
      const keep = active.every(([k, v]) => row.dataset[k] === undefined || row.dataset[k] === v);
      row.hidden = !keep;
      if (table.id === "leaderboard-table") { total += 1; shown += keep ? 1 : 0; }
    });
  });
  const label = document.getElementById("shown");
  if (label) label.textContent = `${shown} of ${total} rows shown`;
}

function applyMetric() {
  const select = document.getElementById("metric-filter");
  const metric = select ? select.value : "";
  document.querySelectorAll("#leaderboard-table [data-metric]").forEach((el) => {
    el.hidden = metric !== "" && el.dataset.metric !== metric;
  });
}

function initFilters() {
  document.querySelectorAll("select[data-filter]").forEach((s) => s.addEventListener("change", applyFilters));
  const metric = document.getElementById("metric-filter");
  if (metric) metric.addEventListener("change", applyMetric);
  applyFilters();
}

document.addEventListener("DOMContentLoaded", () => { initSorting(); initFilters(); });
