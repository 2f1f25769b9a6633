
(function () {
"use strict";
var D = JSON.parse(document.getElementById("cr-data").textContent);
var C = D.columns, N = D.n, T = D.texts, PAGE = 50;
var page = 0, filtered = [], open = {};
function $(id) { return document.getElementById(id); }
function el(tag, cls, text) {
  var e = document.createElement(tag);
  if (cls) { e.className = cls; }
  if (text !== undefined && text !== null) { e.textContent = String(text); }
  return e;
}
function val(col, i) { var a = C[col]; return a ? a[i] : null; }
function fmt(x, d) { return (x === null || x === undefined) ? "" : Number(x).toFixed(d); }
function num(id) { var e = $(id); return e ? parseFloat(e.value) : NaN; }
function sel(id) { var e = $(id); return e ? e.value : ""; }
function fill(select, values) {
  if (!select) { return; }
  values.forEach(function (v) {
    var o = document.createElement("option"); o.value = v; o.textContent = v;
    select.appendChild(o);
  });
}
function levelClass(score) {
  if (score === null || score === undefined) { return ""; }
  return score >= 1 ? "lv-3" : score >= 0.5 ? "lv-2" : score >= 0.25 ? "lv-1" : "lv-0";
}

var hay = new Array(N);
for (var i = 0; i < N; i++) {
  hay[i] = [val("cell", i), val("label", i), val("ontology_id", i), val("ontology_label", i),
            val("truth", i), val("cluster", i)]
    .filter(function (v) { return v !== null && v !== undefined; }).join("\u0001").toLowerCase();
}

var cols = [["cell", "cell"]];
if (D.has_cluster) { cols.push(["cluster", D.groupby]); }
cols.push(["label", "label"], ["cl", "CL term"]);
if (C.confidence) { cols.push(["confidence", "confidence"]); }
if (D.has_score) { cols.push(["truth", "truth"], ["score", "score"], ["level", "level"]); }
if (C.evidence_fraction) { cols.push(["evidence_fraction", "evidence"]); }

function header(table, names) {
  var tr = el("tr");
  names.forEach(function (n) { tr.appendChild(el("th", null, n)); });
  table.querySelector("thead").appendChild(tr);
}
header($("cell-table"), cols.map(function (c) { return c[1]; }));

function highlighted(text, present, absent) {
  var frag = document.createDocumentFragment();
  if (!text) { return frag; }
  var kinds = {};
  present.forEach(function (g) { kinds[g.toUpperCase()] = "present"; });
  absent.forEach(function (g) { kinds[g.toUpperCase()] = "absent"; });
  var names = Object.keys(kinds).sort(function (a, b) { return b.length - a.length; })
    .map(function (g) { return g.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"); });
  if (!names.length) { frag.appendChild(document.createTextNode(text)); return frag; }
  var re = new RegExp("(?<![A-Za-z0-9_-])(" + names.join("|") + ")(?![A-Za-z0-9_-])", "gi");
  var last = 0, m;
  while ((m = re.exec(text)) !== null) {
    if (m.index > last) { frag.appendChild(document.createTextNode(text.slice(last, m.index))); }
    var kind = kinds[m[1].toUpperCase()];
    var mk = el("mark", "gene " + kind, m[1]);
    mk.title = kind === "present" ? "expressed in this cell" : "not expressed in this cell";
    frag.appendChild(mk);
    last = re.lastIndex;
    if (m[0].length === 0) { re.lastIndex++; }
  }
  if (last < text.length) { frag.appendChild(document.createTextNode(text.slice(last))); }
  return frag;
}

function detail(i) {
  var td = el("td"); td.colSpan = cols.length;
  var present = val("present", i) || [], absent = val("absent", i) || [];
  var reasoning = T[val("reasoning", i)] || "", response = T[val("response", i)] || "";
  if (C.cluster_label) {
    var agree = val("cluster_agreement", i);
    td.appendChild(el("p", null, "cluster label: " + val("cluster_label", i) +
      (agree === null || agree === undefined ? "" : " (agreement " + fmt(agree, 2) + ")")));
  }
  if (reasoning) {
    td.appendChild(el("h4", null, "Reasoning"));
    var r = el("div", "reasoning"); r.appendChild(highlighted(reasoning, present, absent));
    td.appendChild(r);
  }
  td.appendChild(el("h4", null, "Model response"));
  var resp = el("div", "response");
  resp.appendChild(reasoning ? document.createTextNode(response)
                             : highlighted(response, present, absent));
  td.appendChild(resp);
  var ev = el("p");
  ev.appendChild(el("strong", null, "cited, expressed: "));
  ev.appendChild(document.createTextNode(present.join(", ") || "none"));
  ev.appendChild(el("br"));
  ev.appendChild(el("strong", null, "cited, not expressed: "));
  ev.appendChild(document.createTextNode(absent.join(", ") || "none"));
  if (val("evidence_flag", i) === true) {
    ev.appendChild(el("br"));
    ev.appendChild(el("span", "flag", "flagged: the reasoning leans on genes this cell does not " +
                                      "express"));
  }
  td.appendChild(ev);
  var tr = el("tr", "detail"); tr.appendChild(td);
  return tr;
}

function cellRow(i) {
  var tr = el("tr", "cell-row");
  tr.dataset.index = String(i);
  cols.forEach(function (c) {
    var k = c[0], td;
    if (k === "cl") {
      var id = val("ontology_id", i), lab = val("ontology_label", i);
      td = el("td", "col-cl", id ? id + (lab ? " " + lab : "") : "");
    } else if (k === "confidence" || k === "evidence_fraction") {
      td = el("td", "col-" + k, fmt(val(k, i), 2));
      if (k === "evidence_fraction" && val("evidence_flag", i) === true) {
        td.className += " flag"; td.title = "reasoning cites genes this cell does not express";
      }
    } else if (k === "score") {
      td = el("td", "col-score " + levelClass(val("score", i)), fmt(val("score", i), 2));
    } else {
      td = el("td", "col-" + k, val(k, i));
    }
    tr.appendChild(td);
  });
  tr.addEventListener("click", function () {
    if (open[i]) { open[i].remove(); delete open[i]; return; }
    open[i] = detail(i); tr.after(open[i]);
  });
  return tr;
}

function render() {
  var body = $("cell-table").querySelector("tbody");
  body.replaceChildren(); open = {};
  var pages = Math.max(1, Math.ceil(filtered.length / PAGE));
  if (page >= pages) { page = pages - 1; }
  var start = page * PAGE, stop = Math.min(filtered.length, start + PAGE);
  for (var j = start; j < stop; j++) { body.appendChild(cellRow(filtered[j])); }
  $("count").textContent = filtered.length + " of " + N + " cells match" +
    (D.n_total > N ? " (browser holds a sample of " + N + " of " + D.n_total + " cells)" : "");
  $("page-info").textContent = "page " + (page + 1) + " / " + pages;
  $("prev").disabled = page === 0; $("next").disabled = page >= pages - 1;
}

function apply() {
  var q = $("search").value.trim().toLowerCase();
  var lab = sel("label-filter"), clu = sel("cluster-filter"), lev = sel("level-filter");
  var smin = num("score-min"), smax = num("score-max"), cmin = num("conf-min");
  var flagged = $("flagged-only").checked;
  filtered = [];
  for (var i = 0; i < N; i++) {
    if (q && hay[i].indexOf(q) < 0) { continue; }
    if (lab && val("label", i) !== lab) { continue; }
    if (clu && val("cluster", i) !== clu) { continue; }
    if (lev && val("level", i) !== lev) { continue; }
    var s = val("score", i);
    if (!isNaN(smin) && !(s !== null && s !== undefined && s >= smin)) { continue; }
    if (!isNaN(smax) && !(s !== null && s !== undefined && s <= smax)) { continue; }
    var c = val("confidence", i);
    if (!isNaN(cmin) && !(c !== null && c !== undefined && c >= cmin)) { continue; }
    if (flagged && val("evidence_flag", i) !== true) { continue; }
    filtered.push(i);
  }
  page = 0; render();
}

fill($("label-filter"), D.labels);
fill($("cluster-filter"), D.clusters);
fill($("level-filter"), D.levels);
["search", "score-min", "score-max", "conf-min"].forEach(function (id) {
  if ($(id)) { $(id).addEventListener("input", apply); }
});
["label-filter", "cluster-filter", "level-filter", "flagged-only"].forEach(function (id) {
  if ($(id)) { $(id).addEventListener("change", apply); }
});
$("reset").addEventListener("click", function () {
  document.querySelectorAll(".controls input, .controls select").forEach(function (e) {
    if (e.type === "checkbox") { e.checked = false; } else { e.value = ""; }
  });
  apply();
});
$("prev").addEventListener("click", function () { page--; render(); });
$("next").addEventListener("click", function () { page++; render(); });

if (D.has_cluster) {
  var ct = $("cluster-table");
  var cnames = [D.groupby, "cells", "majority label", "fraction"];
  if (D.clusters_table.length && D.clusters_table[0].mean_confidence !== null) {
    cnames.push("mean confidence");
  }
  if (D.has_score) { cnames.push("mean score"); }
  header(ct, cnames);
  D.clusters_table.forEach(function (r) {
    var tr = el("tr");
    tr.appendChild(el("td", null, r.cluster)); tr.appendChild(el("td", null, r.n));
    tr.appendChild(el("td", null, r.top_label));
    tr.appendChild(el("td", null, fmt(r.top_fraction, 2)));
    if (cnames.indexOf("mean confidence") >= 0) {
      tr.appendChild(el("td", null, fmt(r.mean_confidence, 2)));
    }
    if (D.has_score) { tr.appendChild(el("td", levelClass(r.mean_score), fmt(r.mean_score, 3))); }
    tr.addEventListener("click", function () {
      $("cluster-filter").value = r.cluster; apply();
      $("cells").scrollIntoView();
    });
    ct.querySelector("tbody").appendChild(tr);
  });
}

if (D.per_label.length && $("per-label")) {
  var pl = $("per-label");
  header(pl, ["truth label", "read as", "cells", "mean score", "exact CL term", "subtype",
              "major", "partial", "incorrect", "most common prediction", "fraction"]);
  D.per_label.forEach(function (r) {
    var tr = el("tr");
    [r.truth, r.read_as, r.n, fmt(r.mean_score, 3), fmt(r.exact_cl_accuracy, 2),
     fmt(r.subtype_correct, 2), fmt(r.major_correct, 2),
     fmt(r.partially_correct, 2), fmt(r.incorrect, 2), r.top_prediction,
     fmt(r.top_prediction_fraction, 2)].forEach(function (v) {
      tr.appendChild(el("td", null, v));
    });
    pl.querySelector("tbody").appendChild(tr);
  });
}

apply();
document.body.dataset.ready = "1";
})();
