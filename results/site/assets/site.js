// Sorting and filtering of the browser's tables. Written by hand (about 60 lines): the site
// must load nothing from the network, and no pinned Python package ships a table script.
"use strict";
function cellKey(row, i) {
  const cell = row.cells[i];
  const v = cell.dataset.value !== undefined ? cell.dataset.value : cell.textContent.trim();
  return v;
}
function compare(a, b, numeric) {
  if (a === "" && b === "") return 0;
  if (a === "") return 1;  // missing values last, whatever the direction
  if (b === "") return -1;
  return numeric ? parseFloat(a) - parseFloat(b) : a.localeCompare(b);
}
function sortTable(table, i) {
  const th = table.tHead.rows[0].cells[i];
  const dir = th.getAttribute("aria-sort") === "descending" ? "ascending" : "descending";
  for (const h of table.tHead.rows[0].cells) h.removeAttribute("aria-sort");
  th.setAttribute("aria-sort", dir);
  const body = table.tBodies[0];
  const rows = Array.from(body.rows);
  const numeric = rows.every(r => { const v = cellKey(r, i); return v === "" || !isNaN(parseFloat(v)); });
  const sign = dir === "ascending" ? 1 : -1;
  rows.sort((a, b) => {
    const ka = cellKey(a, i), kb = cellKey(b, i);
    if (ka === "" || kb === "") return compare(ka, kb, numeric);
    return sign * compare(ka, kb, numeric);
  });
  body.append(...rows);
}
function applyFilters(table) {
  const id = table.id;
  const text = document.querySelector(`[data-filter-for="${id}"]`);
  const cat = document.querySelector(`[data-category-for="${id}"]`);
  const paged = document.querySelector(`[data-paged-for="${id}"]`);
  const q = text ? text.value.trim().toLowerCase() : "";
  let shown = 0;
  for (const row of table.tBodies[0].rows) {
    const ok = (!q || row.textContent.toLowerCase().includes(q))
      && (!cat || !cat.value || row.dataset.category === cat.value)
      && (!paged || !paged.checked || row.dataset.paged === "1");
    row.hidden = !ok;
    if (ok) shown += 1;
  }
  const count = document.getElementById(`${id}-count`);
  if (count) count.textContent = `${shown} of ${table.tBodies[0].rows.length} units`;
}
for (const table of document.querySelectorAll("table.sortable")) {
  Array.from(table.tHead.rows[0].cells).forEach((th, i) => th.addEventListener("click", () => sortTable(table, i)));
  if (table.id) {
    for (const el of document.querySelectorAll(`[data-filter-for="${table.id}"], [data-category-for="${table.id}"], [data-paged-for="${table.id}"]`)) {
      for (const ev of ["input", "change"]) el.addEventListener(ev, () => applyFilters(table));
    }
    applyFilters(table);
  }
}
