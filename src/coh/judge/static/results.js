// coh judge results page: the table from /api/results (textContent only) and the plot.
"use strict";

const pct = (s) => `${(100 * s.share).toFixed(1)}% [${(100 * s.low).toFixed(1)}, ${(100 * s.high).toFixed(1)}]`;

function cell(text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

async function load() {
  const r = await fetch("/api/results", { credentials: "same-origin" });
  const error = document.getElementById("error");
  if (!r.ok) {
    error.textContent = r.status === 401 ? "Log in on the judging page first." : `HTTP ${r.status}`;
    error.hidden = false;
    return;
  }
  const data = await r.json();
  const rows = document.getElementById("rows");
  for (const p of data.pairs) {
    const tr = document.createElement("tr");
    tr.append(cell(p.system_a), cell(p.system_b), cell(String(p.votes), "num"), cell(String(p.prompts), "num"),
      cell(String(p.voters), "num"), ...["win", "tie", "loss", "neither"].map((o) => cell(pct(p.shares[o]), "num")),
      cell(`${p.left_chosen}/${p.decisive}`, "num"));
    rows.append(tr);
  }
  if (!data.pairs.length) {
    error.textContent = "No votes yet.";
    error.hidden = false;
  }
  document.getElementById("table").hidden = !data.pairs.length;
  const img = document.getElementById("plot");
  img.src = "/api/results.png";
  img.hidden = false;
}

load();
