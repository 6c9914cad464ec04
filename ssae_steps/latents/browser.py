"""The latent browser: one self-contained static HTML page (no server, no network) listing
an SSAE's latents and the GSAE latents it dropped, with sort, filter and pages, and per
latent its top-activating held-out contexts (tokens shaded by activation), activation
histogram, logit-lens tokens, nearest GSAE latent and lineage class.

:mod:`ssae_steps.latents.lineage` computes both SAEs' codes and classes; the per-latent
records (contexts, histogram, logit lens) are built here and embedded as one JSON object.
The page renders only the current page of the list and the selected latent, so thousands
of latents stay fast.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ssae_steps.files import write_text
from ssae_steps.latents.config import LineageConfig

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Latent browser: __TITLE__</title>
<style>
body{font:14px system-ui,sans-serif;margin:0;display:flex;height:100vh;color:#222}
#side{width:46%;overflow:auto;border-right:1px solid #ccc;padding:8px}
#detail{flex:1;overflow:auto;padding:12px}
table{border-collapse:collapse;width:100%}th,td{padding:2px 6px;text-align:right;border-bottom:1px solid #eee}
th{cursor:pointer;background:#f4f4f4;position:sticky;top:0}td:nth-child(2),td:last-child{text-align:left}
tr.sel{background:#ffeebb}tbody tr{cursor:pointer}
.cls{padding:0 4px;border-radius:3px;color:#fff;font-size:12px}
.kept{background:#4c72b0}.drifted{background:#dd8452}.new{background:#55a868}.dead{background:#8c8c8c}.dropped{background:#c44e52}
.ctx{font-family:ui-monospace,monospace;white-space:pre-wrap;margin:4px 0;padding:4px;background:#fafafa}
.tok{border-radius:2px}.fire{outline:1px solid #c00}
#controls>*{margin:2px 4px 2px 0}
</style></head><body>
<script>
// Any script error is shown on the page (and a headless test reads it from the DOM).
window.addEventListener("error", e => { document.getElementById("js-errors").textContent += e.message + "\\n"; });
</script>
<div id="side">
<h3 style="margin:4px 0">__TITLE__</h3>
<div id="controls">
<select id="cls"><option value="">all classes</option><option>kept</option><option>drifted</option>
<option>new</option><option>dropped</option></select>
<label><input type="checkbox" id="concept"> detects a concept</label>
<input id="search" placeholder="token in contexts or logit lens" size="24">
<span id="count"></span>
<button id="prev">&lt;</button><span id="page"></span><button id="next">&gt;</button>
</div>
<table><thead><tr>
<th data-k="latent">latent</th><th data-k="cls">class</th><th data-k="freq">fires/1k tok</th>
<th data-k="spec">subdomain x</th><th data-k="cos">GSAE cos</th><th data-k="concepts">concepts</th>
</tr></thead><tbody id="rows"></tbody></table>
</div>
<div id="detail"></div>
<pre id="js-errors" style="position:fixed;bottom:0;right:0;color:#c00;margin:0"></pre>
<script id="data" type="application/json">__DATA__</script>
<script>
"use strict";
const D = JSON.parse(document.getElementById("data").textContent);
const V = D.vocab, L = D.latents, PAGE_SIZE = D.page_size, TOKENS = D.sub_tokens + D.gen_tokens;
L.forEach((l, i) => { l.i = i; l.freq = 1000 * (l.fs + l.fg) / TOKENS;
  l.text = (l.ctx.flat().map(t => V[t[0]]).join("") + " " + l.lens.map(t => V[t]).join(" ")).toLowerCase(); });
let view = L.slice(), page = 0, sortKey = "spec", sortDown = true, selected = null;
const esc = s => s.replace(/[&<>]/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;"}[c]));
const fmt = (x, d) => x === null || x === undefined ? "" : Number(x).toFixed(d);
function name(l) { return (l.sae === "ssae" ? "S" : "G") + l.latent; }
function apply() {
  const cls = document.getElementById("cls").value, q = document.getElementById("search").value.toLowerCase();
  const needConcept = document.getElementById("concept").checked;
  view = L.filter(l => (!cls || l.cls === cls) && (!needConcept || l.concepts) && (!q || l.text.includes(q)));
  view.sort((a, b) => { const x = a[sortKey] ?? -Infinity, y = b[sortKey] ?? -Infinity;
    return (x < y ? -1 : x > y ? 1 : 0) * (sortDown ? -1 : 1); });
  page = 0; render();
}
function render() {
  const pages = Math.max(1, Math.ceil(view.length / PAGE_SIZE));
  page = Math.min(page, pages - 1);
  document.getElementById("count").textContent = view.length + " latents";
  document.getElementById("page").textContent = " page " + (page + 1) + "/" + pages + " ";
  const body = document.getElementById("rows");
  body.innerHTML = view.slice(page * PAGE_SIZE, (page + 1) * PAGE_SIZE).map(l =>
    `<tr data-i="${l.i}" class="${l === selected ? "sel" : ""}"><td>${name(l)}</td>` +
    `<td><span class="cls ${l.cls}">${l.cls}</span></td><td>${fmt(l.freq, 2)}</td><td>${fmt(l.spec, 1)}</td>` +
    `<td>${fmt(l.cos, 2)}</td><td>${esc(l.concepts || "")}</td></tr>`).join("");
  if (!selected && view.length) show(view[0]);
}
function histogram(l) {
  const max = Math.max(1, ...l.hist), w = 20;
  return `<svg width="${w * l.hist.length + 40}" height="90" role="img" aria-label="activation histogram">` +
    l.hist.map((c, i) => `<rect x="${i * w}" y="${80 - 75 * c / max}" width="${w - 2}" height="${75 * c / max}"` +
      ` fill="#4c72b0"><title>${c}</title></rect>`).join("") +
    `<text x="0" y="90" font-size="10">0</text><text x="${w * l.hist.length - 20}" y="90" font-size="10">` +
    `${fmt(l.hist_max, 2)}</text></svg>`;
}
function context(window) {
  const max = Math.max(1e-9, ...window.map(t => t[1]));
  return `<div class="ctx">` + window.map(t => {
    const a = t[1] / max;
    return `<span class="tok${a >= 0.999 ? " fire" : ""}" style="background:rgba(255,120,0,${a.toFixed(2)})"` +
      ` title="${fmt(t[1], 3)}">${esc(V[t[0]])}</span>`; }).join("") + `</div>`;
}
function show(l) {
  selected = l;
  document.querySelectorAll("#rows tr").forEach(r => r.classList.toggle("sel", Number(r.dataset.i) === l.i));
  const match = l.sae === "ssae"
    ? `nearest GSAE latent G${l.match}, decoder cosine ${fmt(l.cos, 3)}, activation correlation ${fmt(l.corr, 3)}`
    : `GSAE latent dropped by the SSAE: best cosine to a live SSAE latent ${fmt(l.cos, 3)}`;
  document.getElementById("detail").innerHTML =
    `<h2 id="latent-title">${name(l)} <span class="cls ${l.cls}">${l.cls}</span></h2><p>${match}</p>` +
    `<p>fires ${l.fs} times on ${D.sub_tokens} subdomain and ${l.fg} on ${D.gen_tokens} general held-out tokens` +
    ` (subdomain rate / general rate ${fmt(l.spec, 2)})` +
    `${l.concepts ? "; best detector of: " + esc(l.concepts) : ""}</p>` +
    `<h3>Activation histogram (when firing)</h3>${histogram(l)}` +
    `<h3>Logit lens: tokens the decoder direction promotes</h3><p>` +
    l.lens.map(t => `<code>${esc(V[t])}</code>`).join(" ") + `</p>` +
    `<h3>Top-activating held-out contexts</h3><div id="contexts">${l.ctx.map(context).join("")}</div>`;
}
document.getElementById("rows").addEventListener("click", e => {
  const row = e.target.closest("tr"); if (row) show(L[Number(row.dataset.i)]); });
document.querySelectorAll("th").forEach(th => th.addEventListener("click", () => {
  sortDown = sortKey === th.dataset.k ? !sortDown : true; sortKey = th.dataset.k; apply(); }));
["cls", "concept"].forEach(id => document.getElementById(id).addEventListener("change", apply));
document.getElementById("search").addEventListener("input", apply);
document.getElementById("prev").addEventListener("click", () => { page = Math.max(0, page - 1); render(); });
document.getElementById("next").addEventListener("click", () => { page += 1; render(); });
apply();
</script></body></html>
"""


@torch.no_grad()
def logit_lens(directions: torch.Tensor, unembed: torch.Tensor, k: int, chunk: int = 256) -> np.ndarray:
    """The ``k`` token ids each direction raises most through the unembedding (the final
    norm's per-dimension scale is folded into ``unembed`` by the caller)."""
    out = []
    for start in range(0, len(directions), chunk):
        out.append((directions[start : start + chunk] @ unembed.T).topk(k, dim=1).indices.numpy())
    return np.concatenate(out) if out else np.zeros((0, k), int)


def unembedding(model_dir: str | Path) -> torch.Tensor:
    """Output embedding ``[vocab, d_model]`` with the final RMSNorm scale folded in
    (Gemma's norm multiplies by ``1 + weight``)."""
    from ssae_steps.model import load_model

    model, _ = load_model(model_dir)
    unembed = model.get_output_embeddings().weight.detach().float()
    norm = getattr(getattr(model, "model", model), "norm", None)
    if norm is not None and getattr(norm, "weight", None) is not None:
        scale = norm.weight.detach().float()
        unembed = unembed * ((1 + scale) if "gemma" in model.config.model_type else scale)
    return unembed


def top_contexts(codes: Any, latent: int, rows: dict[str, np.ndarray], index: dict, cfg: LineageConfig) -> list:
    """The latent's ``cfg.contexts`` strongest held-out firings as ``[(token id, activation
    of this latent), ...]`` windows, the firing token at position ``context_before``
    (or earlier where the document starts)."""
    column = codes[:, latent]
    if not column.nnz:
        return []
    order = np.argsort(-column.data, kind="stable")[: cfg.contexts]
    out = []
    for r in column.indices[order]:
        doc, pos = rows["doc_id"][r], int(rows["position"][r])
        window = []
        for p in range(pos - cfg.context_before, pos + cfg.context_after + 1):
            j = index.get((doc, p))
            if j is not None:
                window.append((int(rows["token_id"][j]), float(codes[j, latent])))
        out.append(window)
    return out


def browser_records(
    name: str, codes: Any, latents: np.ndarray, rows: dict, index: dict, lens: np.ndarray, cfg: LineageConfig
) -> list[dict[str, Any]]:
    """Per latent: contexts, activation histogram and logit-lens tokens (ids to decode)."""
    out = []
    for i, latent in enumerate(latents):
        column = codes[:, int(latent)]
        values = column.data
        hist = np.histogram(values, bins=12, range=(0, float(values.max()) if len(values) else 1.0))[0]
        out.append(
            {
                "sae": name,
                "latent": int(latent),
                "ctx": top_contexts(codes, int(latent), rows, index, cfg),
                "hist": hist.tolist(),
                "hist_max": float(values.max()) if len(values) else 0.0,
                "lens": lens[i].tolist(),
            }
        )
    return out


def write_browser(
    records: list[dict[str, Any]],
    tokenizer: Any,
    out: str | Path,
    title: str,
    page_size: int,
    sub_tokens: int,
    gen_tokens: int,
) -> int:
    """Write the page; returns its size in bytes. ``records`` carry token ids in ``ctx``
    (``[[id, activation], ...]`` windows) and ``lens``; they are decoded once into a shared
    vocabulary so the page holds each token string once."""
    vocab: dict[int, int] = {}
    strings: list[str] = []

    def ref(token: int) -> int:
        if token not in vocab:
            vocab[token] = len(strings)
            strings.append(tokenizer.decode([token]).replace("\n", "⏎"))
        return vocab[token]

    latents = []
    for r in records:
        latents.append(
            {
                **{k: v for k, v in r.items() if k not in ("ctx", "lens")},
                "ctx": [[[ref(t), round(a, 3)] for t, a in window] for window in r["ctx"]],
                "lens": [ref(t) for t in r["lens"]],
            }
        )
    data = {
        "vocab": strings,
        "latents": latents,
        "page_size": page_size,
        "sub_tokens": sub_tokens,
        "gen_tokens": gen_tokens,
    }
    # "</" cannot close the script element once escaped; the JSON stays valid.
    payload = json.dumps(data, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
    page = PAGE.replace("__TITLE__", html.escape(title)).replace("__DATA__", payload)
    write_text(out, page)
    return len(page.encode())
