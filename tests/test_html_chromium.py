#!/usr/bin/python3
"""test_html_chromium.py QWEN3_DIFF: the HTML report as a browser shows it. A clean run (with decode
steps) and a faulty one (rope-interleaved@1) on knorm_extreme are written with --html and opened in
headless Chromium (Debian package `chromium`), offline:

- --dump-dom: the DOM Chromium built holds every section in order and as many plots, heatmap cells, grid
  cells and scatter points as the file itself (an unclosed element would swallow what follows);
- the console: no error, no Content-Security-Policy refusal (the page loads nothing and runs nothing), and
  no request leaves the machine (every host name resolves to nothing);
- --screenshot: a PNG of the window's size that is not blank (many colours, a large share of
  non-background pixels, content down to the last section), with the verdict's badge in its colour near
  the top (green for the clean run, red for the faulty one): the inline CSS was applied.

Skips (exit 77) with a message where Chromium or Pillow is not installed (`apt-get install chromium
python3-pil`; ./run installs both). The screenshots are kept in $QD_HTML_SCREENSHOTS when that is set, for a person to look at.
"""
import html.parser
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

import qd_check
from qd_check import FX, check, finish

BIN = sys.argv[1]
KN = os.path.join(FX, "knorm_extreme")
SECTIONS = ["verdict", "layers", "heatmap", "steps", "where", "scatter", "failing", "next", "attrs"]
WIDTH, HEIGHT = 1280, 6000  # tall enough for the whole page of a 4-layer model in one shot

chrome = shutil.which("chromium") or shutil.which("chromium-browser")
if not chrome:
    print("SKIP: chromium not found (apt-get install chromium): the report is not rendered")
    sys.exit(77)
try:
    from PIL import Image
except ImportError:
    print("SKIP: Pillow not found (apt-get install python3-pil): the screenshots cannot be read")
    sys.exit(77)

tmp = tempfile.mkdtemp(prefix="qd_html_chromium.")


def path(name):
    return os.path.join(tmp, name)


def chromium(*args):
    """Headless Chromium on a throwaway profile, offline (every host resolves to nothing), logging the
    page's console to stderr."""
    cmd = [chrome, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--host-resolver-rules=MAP * ~NOTFOUND", f"--user-data-dir={path('profile')}",
           "--enable-logging=stderr", "--v=0", "--hide-scrollbars", *args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": tmp})
    return p.returncode, p.stdout, p.stderr


class Counts(html.parser.HTMLParser):
    """Section ids in order, and how many elements of each (tag, class) there are."""

    def __init__(self, text):
        super().__init__()
        self.sections, self.n = [], {}
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.sections.append(a.get("id"))
        for c in a.get("class", "").split():
            self.n[(tag, c)] = self.n.get((tag, c), 0) + 1


def png_pixels(p):
    """(height, width, 3) uint8 array of the PNG's RGB."""
    with Image.open(p) as im:
        return np.asarray(im.convert("RGB"))


def page(name, *args, want_rc):
    rc, out, err = qd_check.run(BIN, "--model", KN, "--tokens", "@" + os.path.join(KN, "prompt.txt"),
                                "--backends", "ref,emu", "--html", path(name + ".html"), *args)
    check(rc == want_rc, f"{name}: the run exits {want_rc} (got {rc}: {err.strip()})")
    return path(name + ".html")


def look(name, html_path, badge_rgb):
    text = open(html_path, encoding="utf-8").read()
    url = "file://" + html_path
    # the DOM Chromium built
    rc, dom, err = chromium("--dump-dom", url)
    check(rc == 0 and "<html" in dom[:200], f"{name}: chromium --dump-dom exits 0 with the DOM ({rc})")
    mine, theirs = Counts(text), Counts(dom)
    check(theirs.sections == SECTIONS, f"{name}: the DOM holds every section in order ({theirs.sections})")
    for key in (("svg", "plot"), ("rect", "cell"), ("circle", "pt"), ("tr", "nrow"), ("tr", "wrow"), ("tr", "frow")):
        check(theirs.n.get(key, 0) == mine.n.get(key, 0),
              f"{name}: the DOM holds {theirs.n.get(key, 0)} {key[0]}.{key[1]}, as the file ({mine.n.get(key, 0)})")
    check(theirs.n.get(("svg", "plot"), 0) == 17, f"{name}: 17 plots rendered")
    console = [l for l in err.splitlines() if "CONSOLE" in l or "Content Security Policy" in l or "Refused" in l]
    check(not console, f"{name}: no console message, no CSP refusal ({console[:2]})")
    # the screenshot
    png = path(name + ".png")
    rc, out, err = chromium(f"--window-size={WIDTH},{HEIGHT}", f"--screenshot={png}", url)
    check(rc == 0 and os.path.exists(png), f"{name}: chromium --screenshot exits 0 and writes the PNG ({rc})")
    if not os.path.exists(png):
        return
    px = png_pixels(png)
    check(px.shape[:2] == (HEIGHT, WIDTH), f"{name}: the PNG is {WIDTH}x{HEIGHT} ({px.shape[1]}x{px.shape[0]})")
    flat = px.reshape(-1, 3)
    colours = len(np.unique(flat[:: 7].astype(np.int64) @ np.array([65536, 256, 1])))
    bg = np.all(px == (0xfa, 0xfa, 0xfa), axis=2) | np.all(px == 255, axis=2)
    rows = np.nonzero(~bg.all(axis=1))[0]
    last = int(rows[-1]) if len(rows) else 0
    ink = 1 - bg[:last + 1].mean()  # over the page's own height
    check(colours > 64, f"{name}: {colours} colours, not a blank page")
    check(ink > 0.05, f"{name}: {100 * ink:.1f} % of the page's pixels are not background")
    check(last > 2500, f"{name}: content down to y = {last} (every section laid out)")
    badge = np.all(px[:300] == badge_rgb, axis=2).sum()
    check(badge > 1000, f"{name}: {badge} pixels of the verdict badge's colour {badge_rgb} near the top")
    keep = os.environ.get("QD_HTML_SCREENSHOTS")
    if keep:
        os.makedirs(keep, exist_ok=True)
        shutil.copy(png, os.path.join(keep, name + ".png"))


look("clean", page("clean", "--decode", "2", "--isolate", want_rc=0), (0x2e, 0x7d, 0x32))
look("faulty", page("faulty", "--inject", "rope-interleaved@1", want_rc=1), (0xc6, 0x28, 0x28))
shutil.rmtree(tmp)
finish()
