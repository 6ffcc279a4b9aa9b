#!/usr/bin/python3
"""test_html_report.py QWEN3_DIFF: the HTML report (reports/html.c), read back as HTML and checked against
the run's own figures (its JSON report and its dump).

- A clean run (ref vs emu on knorm_extreme, --isolate, 2 decode steps) and a faulty one
  (rope-interleaved@1): every section is there, with the verdict, the first divergence's step, layer, op
  and ratio, one plot per compared tap with one point per layer, a heatmap of layers x taps cells whose
  failing cells are the failing rows, a step x layer grid of steps x (layers + 2) cells, the where table's
  offenders, the scatter's points, the next tokens (the dump's logits' own top ids) and the attributes.
- `qwen3-diff report DUMP.h5` draws the same page as --html from the dump alone (every section but the
  attributes', which says the dump did not record the threshold).
- `compare A.h5 B.h5 --html` draws the offline comparison.
- The page stands alone: a Content-Security-Policy allowing no script and no fetch, no script, no external
  reference. Strings from a dump are escaped (a hostile 'model' attribute and where sentence).
- Bad input: a dump without /diff, a metrics row outside the model, no such file, no -o: exit 2, one line,
  no output file; nothing is left behind but the page itself.
"""
import html.parser
import json
import os
import re
import shutil
import sys
import tempfile

import h5py
import numpy as np

import qd_check
from qd_check import FX, check, finish

BIN = sys.argv[1]
KN = os.path.join(FX, "knorm_extreme")
tmp = tempfile.mkdtemp(prefix="qd_html.")
SECTIONS = ["verdict", "layers", "heatmap", "steps", "where", "scatter", "failing", "next", "attrs"]


def run(*args):
    return qd_check.run(BIN, *args)


def path(name):
    return os.path.join(tmp, name)


class Page(html.parser.HTMLParser):
    """Every element as (tag, attrs, section id, text inside it), and each section's text."""

    def __init__(self, text):
        super().__init__(convert_charrefs=True)
        self.elems, self.stack, self.section, self.texts = [], [], None, {}
        self.order = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.section = a.get("id")
            self.order.append(self.section)
            self.texts[self.section] = ""
        if tag in ("td", "th"):  # cells apart in the row's text
            for o in self.stack:
                o["text"] += " "
        e = {"tag": tag, "attrs": a, "section": self.section, "text": ""}
        self.elems.append(e)
        if tag not in ("meta", "br", "line", "rect", "circle", "polyline", "link", "img"):
            self.stack.append(e)

    def handle_endtag(self, tag):
        while self.stack:
            e = self.stack.pop()
            if e["tag"] == tag:
                break
        if tag == "section":
            self.section = None

    def handle_data(self, data):
        for e in self.stack:
            e["text"] += data
        if self.section:
            self.texts[self.section] += data

    def find(self, tag, cls=None, section=None, **attrs):
        out = []
        for e in self.elems:
            if e["tag"] != tag or (section and e["section"] != section):
                continue
            if cls and cls not in e["attrs"].get("class", "").split():
                continue
            if all(e["attrs"].get(k.replace("_", "-")) == v for k, v in attrs.items()):
                out.append(e)
        return out

    def by_id(self, i):
        hits = [e for e in self.elems if e["attrs"].get("id") == i]
        return hits[0]["text"].strip() if hits else None


def read(p):
    with open(p, encoding="utf-8") as f:
        return f.read()


def standalone(text, what):
    """No script, no fetch: the CSP, and nothing that would load anything."""
    check("Content-Security-Policy" in text and "default-src 'none'" in text,
          f"{what}: a Content-Security-Policy that forbids scripts and fetches")
    check(not re.search(r"<(script|link|img|iframe|object|embed)\b|<[^>]*\s(src|href)=[\"']?[^#\"'\s]|url\(|@import|https?://", text, re.I),
          f"{what}: no script, no external reference")


def top_ids(logits_row, k=10):
    """Top k ids by logit, ties by the smaller id (qd_next_tokens_fill's order)."""
    return sorted(range(len(logits_row)), key=lambda i: (-float(logits_row[i]), i))[:k]


def sections_ok(p, what):
    check(p.order == SECTIONS, f"{what}: the sections in order {SECTIONS} (got {p.order})")


def check_page(p, dump, js, what, decode, next_step=None, located="free", tokenizer=False):
    """The sections against the dump's /diff group and the JSON report of the same run."""
    with h5py.File(dump, "r") as f:
        g = f["diff/ref-vs-emu"]
        rows = g["metrics"][:]
        where = g["where"][:]
        where_text = g.attrs["first_divergence_where"]
        L = json.loads(f.attrs["config_json"])["num_hidden_layers"]
        logits = {k: f[f"{k}/logits"][-1] for k in ("ref", "emu")}
    shown = [r for r in rows if r["mode"].decode() == located]
    taps = sorted({r["tap"].decode() for r in shown if r["layer"] >= 0 and r["step"] == 0})

    # error vs layer: one plot per tap, one point per layer
    plots = p.find("svg", "plot", "layers")
    check(len(plots) == len(taps) == 17, f"{what}: {len(plots)} plots, one per compared layer tap (17)")
    check(sorted(e["attrs"]["data-tap"] for e in plots) == taps, f"{what}: the plots' taps are the compared taps")
    pts = p.find("circle", "pt", "layers")
    check(len(pts) == 17 * L, f"{what}: {len(pts)} points, one per layer of each plot ({17 * L})")
    check(len(p.find("polyline", "limit", "layers")) == 17 and len(p.find("polyline", "floor", "layers")) == 17,
          f"{what}: each plot has its failing line and its noise floor")

    # heatmap: layers x taps cells; the failing cells are the failing rows
    hm = p.find("svg", "heatmap", "heatmap")
    cells = p.find("rect", "cell", "heatmap")
    check(len(hm) == 1 and int(hm[0]["attrs"]["data-layers"]) == L and int(hm[0]["attrs"]["data-taps"]) == 17,
          f"{what}: the heatmap is {L} layers x 17 taps")
    check(len(cells) == L * 17, f"{what}: {len(cells)} heatmap cells = layers x taps ({L * 17})")
    fail_cells = sorted((int(e["attrs"]["data-layer"]), e["attrs"]["data-tap"]) for e in cells
                        if "fail" in e["attrs"]["class"].split())
    fail_rows = sorted((int(r["layer"]), r["tap"].decode()) for r in shown
                       if not r["pass"] and r["layer"] >= 0 and r["step"] == 0)
    check(fail_cells == fail_rows, f"{what}: failing cells {fail_cells} = failing rows {fail_rows}")

    # step x layer grid
    steps = 1 + decode
    grid = p.find("rect", "cell", "steps")
    check(len(grid) == steps * (L + 2), f"{what}: {len(grid)} grid cells = {steps} steps x ({L} layers + 2)")
    check(sorted({int(e["attrs"]["data-step"]) for e in grid}) == list(range(steps)), f"{what}: one grid row per step")

    # scatter: one point per tap with an error and a magnitude
    sc = p.find("svg", "scatter", "scatter")
    npts = len(p.find("circle", "pt", "scatter"))
    want = sum(1 for r in shown if np.isfinite(r["max_mag_ref"]) and r["max_mag_ref"] > 0 and
               np.isfinite(r["max_abs"]) and r["max_abs"] > 0)
    check(len(sc) == 1 and int(sc[0]["attrs"]["data-points"]) == npts == want,
          f"{what}: {npts} scatter points, one per tap with error and magnitude ({want})")

    # failing rows
    nfail = sum(1 for r in rows if not r["pass"])
    check(f"Failing taps ({nfail} of {len(rows)})" in p.texts["failing"], f"{what}: the failing count {nfail}")
    check(len(p.find("tr", "frow", "failing")) == min(nfail, 60), f"{what}: one line per failing row")

    # where: the dump's where table, axis by axis
    for axis in ("token", "head", "channel"):
        want = [int(w["index"]) for w in where if w["axis"].decode() == axis]
        tables = p.find("table", "axis", "where", data_axis=axis)
        got = []
        if tables:
            start = p.elems.index(tables[0])
            for e in p.elems[start + 1:]:
                if e["tag"] == "table":
                    break
                if e["tag"] == "tr" and "wrow" in e["attrs"].get("class", ""):
                    got.append(int(e["text"].split()[0]))
        check(got == want, f"{what}: where by {axis}: {got} = the dump's {want}")
    if where_text:
        check(p.by_id("verdict-where") == "where: " + where_text, f"{what}: the verdict's where line is the dump's")

    # next tokens: at the prompt's last position, the dump's top ids of both sides
    nrows = p.find("tr", "nrow", "next")
    check(len(nrows) == 10, f"{what}: 10 next-token rows")
    next_step = decode if next_step is None else next_step
    if next_step == 0:  # each row's id cells (class "id"): ref's, then emu's; a text column may sit beside each
        ids = [int(e["text"]) for e in p.find("td", "id", "next")]
        got_ref, got_emu = ids[0::2], ids[1::2]
        if tokenizer:
            check(len(p.find("td", "tok", "next")) == 20, f"{what}: the token text beside each id (a tokenizer.json)")
        check(got_ref == top_ids(logits["ref"]) and got_emu == top_ids(logits["emu"]),
              f"{what}: the next tokens are the top-10 ids of the dump's logits ({got_ref[:3]}..., {got_emu[:3]}...)")
    else:
        check(f"At decode step {next_step}" in p.texts["next"], f"{what}: the next tokens of the last decode step")

    # attributes
    a = p.texts["attrs"]
    check("ref: fp32, accumulation f32" in a and "emu: bf16, accumulation f32" in a,
          f"{what}: each side's precision and accumulation")
    check("knorm_extreme" in a and "config: num_hidden_layers" in a and "config: head_dim" in a,
          f"{what}: the model and its config.json")
    if js is not None:
        check(f"{len(js['taps'])} rows" in a, f"{what}: the row count of the JSON report")


# --- a faulty run ----------------------------------------------------------------------------------------
base = ["--model", KN, "--tokens", "@" + os.path.join(KN, "prompt.txt"), "--backends", "ref,emu"]
rc, out, err = run(*base, "--inject", "rope-interleaved@1", "--dump", path("fault.h5"), "--json",
                   path("fault.json"), "--html", path("fault.html"))
check(rc == 1, f"faulty run exits 1 (got {rc}: {err.strip()})")
js = json.load(open(path("fault.json")))
text = read(path("fault.html"))
p = Page(text)
standalone(text, "faulty")
sections_ok(p, "faulty")
fd = js["first_divergence"]
check(p.find("p", "badge")[0]["text"] == "DIVERGED", "faulty: the badge says DIVERGED")
check(p.by_id("verdict-text").startswith("first divergence: layer 1, q_rope — on emu (B)"),
      f"faulty: the headline names layer 1, q_rope, emu ({p.by_id('verdict-text')!r})")
check((p.by_id("fd-step"), p.by_id("fd-layer"), p.by_id("fd-op")) == ("0", str(fd["layer"]), fd["tap"]) ==
      ("0", "1", "q_rope"), "faulty: step 0, layer 1, op q_rope")
check(p.by_id("fd-ratio") == f"{fd['ratio']:.3g}", f"faulty: the ratio {p.by_id('fd-ratio')} is JSON's {fd['ratio']:.3g}")
check(p.by_id("verdict-where") == "where: " + fd["where"]["summary"], "faulty: the where sentence is JSON's")
first = [e for e in p.find("rect", "cell", "heatmap") if "first" in e["attrs"]["class"].split()]
check(len(first) == 1 and (first[0]["attrs"]["data-layer"], first[0]["attrs"]["data-tap"]) == ("1", "q_rope"),
      "faulty: the heatmap marks layer 1, q_rope as the first divergence")
check_page(p, path("fault.h5"), js, "faulty", decode=0, tokenizer=True)

# the same page from the dump alone
rc, out, err = run("report", path("fault.h5"), "-o", path("fault_r.html"))
check(rc == 0 and out.strip() == "report: " + path("fault_r.html"), f"report from the dump exits 0 ({rc}: {err.strip()})")
pr = Page(read(path("fault_r.html")))
same = [s for s in SECTIONS if s != "attrs" and pr.texts.get(s) == p.texts.get(s)]
check(same == [s for s in SECTIONS if s != "attrs"], f"report from the dump: the same sections as --html ({same})")
check(read(path("fault_r.html")).split('<section id="attrs">')[0] == text.split('<section id="attrs">')[0],
      "report from the dump: byte for byte the page --html drew, up to the attributes")
check("the dump does not record --ratio-threshold" in pr.texts["attrs"], "report from the dump: says the threshold is assumed")
check_page(pr, path("fault.h5"), js, "report of the faulty dump", decode=0, tokenizer=True)

# --- a clean run, isolated and with decode steps --------------------------------------------------------------
rc, out, err = run(*base, "--isolate", "--decode", "2", "--dump", path("clean.h5"), "--json", path("clean.json"),
                   "--html", path("clean.html"))
check(rc == 0, f"clean run exits 0 (got {rc}: {err.strip()})")
js = json.load(open(path("clean.json")))
text = read(path("clean.html"))
p = Page(text)
standalone(text, "clean")
sections_ok(p, "clean")
check(p.find("p", "badge")[0]["text"] == "PASS", "clean: the badge says PASS")
check(p.by_id("verdict-text").startswith("no divergence:"), "clean: the headline says no divergence")
check(not [e for e in p.elems if "first" in e["attrs"].get("class", "").split()], "clean: nothing marked as first")
check("no divergence: nothing to break down" in p.texts["where"], "clean: the where section says there is nothing")
check_page(p, path("clean.h5"), js, "clean", decode=2)
rc, out, err = run("report", path("clean.h5"), "-o", path("clean_r.html"))
check(rc == 0, f"report of the clean dump exits 0 ({rc}: {err.strip()})")
pr = Page(read(path("clean_r.html")))
# the dump's next tokens are the prompt's (schema v1 holds the prompt's tensors only)
check_page(pr, path("clean.h5"), js, "report of the clean dump", decode=2, next_step=0)
check("At the prompt's last position (15)" in pr.texts["next"], "report of the clean dump: next tokens at the prompt's end")

# --- the offline compare ------------------------------------------------------------------------------------
rc, out, err = run("compare", path("fault.h5") + ":ref", path("fault.h5") + ":emu", "--html", path("cmp.html"))
check(rc == 1, f"compare --html exits 1 on the faulty dump ({rc}: {err.strip()})")
pc = Page(read(path("cmp.html")))
sections_ok(pc, "compare")
check((pc.by_id("fd-layer"), pc.by_id("fd-op")) == ("1", "q_rope"), "compare: first divergence layer 1, q_rope")
check(len(pc.find("tr", "nrow", "next")) == 10, "compare: the next tokens from both dumps' logits")
check("knorm_extreme" in pc.texts["attrs"] and "config: num_hidden_layers" in pc.texts["attrs"] and
      "prompt ids" in pc.texts["attrs"], "compare: the model, config.json and prompt of dump A")

# --- the tolerance verdict ----------------------------------------------------------------------------------
rc, out, err = run(*base, "--calibrate", "2", "--write-tolerances", path("tol.json"))
check(rc == 0, f"calibrate a tolerance file ({rc}: {err.strip()})")
rc, out, err = run(*base, "--tolerances", path("tol.json"), "--inject", "rope-interleaved@1", "--json",
                   path("tol_fault.json"), "--html", path("tol_fault.html"))
check(rc == 1, f"the fault under --tolerances exits 1 ({rc}: {err.strip()})")
pt = Page(read(path("tol_fault.html")))
fd = json.load(open(path("tol_fault.json")))["first_divergence"]
sections_ok(pt, "tolerances")
check((pt.by_id("fd-layer"), pt.by_id("fd-op")) == (str(fd["layer"]), fd["tap"]),
      f"tolerances: the first divergence is JSON's (layer {fd['layer']}, {fd['tap']})")
check(f": rel_l2 {fd['rel_l2']:.3g} vs tolerance {fd['tol']['rel_l2']:.3g}" in pt.by_id("verdict-text"),
      f"tolerances: the headline gives rel_l2 against its tolerance ({pt.by_id('verdict-text')!r})")
check(len(pt.find("svg", "plot", "layers")) == 17 and not pt.find("polyline", "floor", "layers") and
      len(pt.find("polyline", "limit", "layers")) == 17,
      "tolerances: 17 plots, each with its tolerance line and no noise floor")
check("tolerances: A-vs-B error against absolute tolerances" in pt.texts["attrs"], "tolerances: the verdict is named")

# --- escaping ------------------------------------------------------------------------------------------------
hostile = path("hostile.h5")
shutil.copy(path("fault.h5"), hostile)
with h5py.File(hostile, "a") as f:
    f.attrs["model"] = '<script>alert(1)</script>&"x\''
    f["diff/ref-vs-emu"].attrs["first_divergence_where"] = "<img src=x onerror=alert(2)>"
rc, out, err = run("report", hostile, "-o", path("hostile.html"))
t = read(path("hostile.html")) if rc == 0 else ""
check(rc == 0 and "&lt;script&gt;alert(1)&lt;/script&gt;&amp;&quot;x&#39;" in t and "&lt;img src=x" in t,
      "hostile strings are escaped")
standalone(t, "hostile dump")

# --- bad input ---------------------------------------------------------------------------------------------
rc, out, err = run("--model", KN, "--tokens", "5,17,3", "--backends", "ref", "--dump", path("single.h5"))
rc, out, err = run("report", path("single.h5"), "-o", path("single.html"))
check(rc == 2 and "no /diff group" in err and len(err.strip().splitlines()) == 1 and
      not os.path.exists(path("single.html")), f"a one-backend dump: exit 2, one line ({err.strip()})")
bad = path("bad_rows.h5")
shutil.copy(path("fault.h5"), bad)
with h5py.File(bad, "a") as f:
    m = f["diff/ref-vs-emu/metrics"][:]
    m["layer"][5] = 99
    del f["diff/ref-vs-emu/metrics"]
    f["diff/ref-vs-emu"].create_dataset("metrics", data=m)
rc, out, err = run("report", bad, "-o", path("bad.html"))
check(rc == 2 and "field 'layer'" in err and not os.path.exists(path("bad.html")),
      f"a metrics row past the model: exit 2 naming the field ({err.strip()})")
lacking = path("lacking.h5")
shutil.copy(path("fault.h5"), lacking)
with h5py.File(lacking, "a") as f:
    m = f["diff/ref-vs-emu/metrics"][:]
    keep = [n for n in m.dtype.names if n != "ratio"]
    m2 = np.empty(len(m), dtype=[(n, m.dtype[n]) for n in keep])
    for n in keep:
        m2[n] = m[n]
    del f["diff/ref-vs-emu/metrics"]
    f["diff/ref-vs-emu"].create_dataset("metrics", data=m2)
rc, out, err = run("report", lacking, "-o", path("lacking.html"))
check(rc == 2 and "has no field 'ratio'" in err and not os.path.exists(path("lacking.html")),
      f"a metrics table without a field: exit 2 naming it ({err.strip()})")
rc, out, err = run("report", path("nothing.h5"), "-o", path("nothing.html"))
check(rc == 2 and not os.path.exists(path("nothing.html")), f"no such dump: exit 2 ({err.strip()})")
rc, out, err = run("report", path("fault.h5"))
check(rc == 2 and "-o FILE" in err, f"no -o: exit 2 ({err.strip()})")
rc, out, err = run("report", path("fault.h5"), "-o", path("fault.h5"))
check(rc == 2, f"-o naming the dump itself: exit 2 ({err.strip()})")
check(not [n for n in os.listdir(tmp) if ".tmp." in n], "no temporary file left behind")

shutil.rmtree(tmp)
finish()
