"""Reads the built book as a reader sees it, in headless Chromium at 1280 x 900.

:func:`audit` opens one page, lets a small script measure it after layout, and returns what it
found: where the verdict box starts, the tables wider than their container, words broken
mid-word inside table cells, setup code left visible, table cells with more than 3 decimals.
:func:`screenshot` keeps the first screen.
``python -m adlib pageaudit book/_build/html --screenshots DIR`` audits every chapter and the
scoreboard; the book's tests run the same checks on the smoke build.
"""

from __future__ import annotations

import argparse
import html
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from adlib.book.builder import chapter_of

WIDTH, HEIGHT = 1280, 900
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--window-size={WIDTH},{HEIGHT}", "--virtual-time-budget=8000", "--hide-scrollbars"]

#: A figure shown below this fraction of its drawn width shrinks its text below legibility
#: (a 10 pt label drawn 9 inches wide is shown at 7.6 pt; see :mod:`adlib.book.figures`).
MIN_FIGURE_SCALE = 0.7

#: Code that is setup, not content: it must not be visible on a page.
SETUP_MARKERS = ("Parameters (papermill)", "Parameters\n", "pip install", "pip\", \"install",
                 "run.save_record(", "injected", "import adlib  # noqa")

_SCRIPT = """
<script>
window.addEventListener('load', () => setTimeout(() => {
  const out = {tables: [], wide: [], decimals: [], setup: [], split: []};
  document.querySelectorAll('details').forEach(d => { d.open = true; });
  const main = document.querySelector('main') || document.body;
  const box = document.querySelector('.adlib-verdict-box');
  out.box_top = box ? box.getBoundingClientRect().top + window.scrollY : null;
  out.height = document.documentElement.scrollHeight;
  main.querySelectorAll('table').forEach((t, i) => {
    if (!t.offsetParent) return;
    const parent = t.parentElement;
    const article = t.closest('article') || main;
    const limit = Math.min(parent.clientWidth || 1e9, article.clientWidth || 1e9);
    out.tables.push(i);
    if (t.scrollWidth > limit + 2 || t.getBoundingClientRect().width > limit + 2)
      out.wide.push({index: i, width: t.scrollWidth, container: limit,
                     head: (t.innerText || '').slice(0, 80)});
    t.querySelectorAll('td, th').forEach(c => {
      const m = (c.innerText || '').match(/\\d+\\.\\d{4,}/);
      if (m) out.decimals.push(m[0]);
      // a word (between spaces, dashes, the break points / = + , _ and zero-width or soft
      // hyphen breaks) laid out on two lines
      const walk = document.createTreeWalker(c, NodeFilter.SHOW_TEXT);
      for (let node = walk.nextNode(); node; node = walk.nextNode()) {
        const words = /[^\\s\\-\\u2013\\u2014\\/=+,_\\u200b\\u00ad]+/g;
        for (let w = words.exec(node.data); w; w = words.exec(node.data)) {
          const r = document.createRange();
          r.setStart(node, w.index); r.setEnd(node, w.index + w[0].length);
          const tops = new Set(Array.from(r.getClientRects()).filter(x => x.width > 0)
                                 .map(x => Math.round(x.top)));
          if (tops.size > 1) out.split.push(i + ': ' + w[0]);
        }
      }
    });
  });
  out.shrunk = [];
  main.querySelectorAll('.cell_output img').forEach(img => {
    if (img.offsetParent && img.naturalWidth && img.clientWidth < MIN_SCALE * img.naturalWidth)
      out.shrunk.push({src: img.src.split('/').pop().slice(0, 12),
                       scale: Math.round(100 * img.clientWidth / img.naturalWidth) / 100});
  });
  out.wide_output = [];
  main.querySelectorAll('.cell_output pre').forEach(p => {
    if (p.offsetParent && p.scrollWidth > p.clientWidth + 2)
      out.wide_output.push((p.innerText || '').slice(0, 80));
  });
  main.querySelectorAll('.cell_input, .cell .input').forEach(c => {
    if (!c.offsetParent) return;
    const text = c.innerText || '';
    MARKERS.forEach(m => { if (text.includes(m)) out.setup.push(text.slice(0, 80)); });
  });
  const pre = document.createElement('pre');
  pre.id = 'adlib-audit'; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
}, 500));
</script>
"""


def browser() -> str | None:
    """The headless browser on this machine (Chromium or Chrome), or None."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def _run(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    exe = browser()
    if exe is None:
        msg = "no headless browser found: install Chromium (apt-get install chromium)"
        raise RuntimeError(msg)
    return subprocess.run([exe, *FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=180)


def audit(page: Path | str) -> dict:
    """Measure one built page: ``box_top`` (px from the top, None without a verdict box),
    ``wide`` (tables wider than their container), ``wide_output`` (printed output that scrolls
    sideways), ``setup`` (visible setup code), ``decimals`` (table cells with more than 3
    decimals), ``split`` (words laid out on two lines inside a table cell), ``shrunk``
    (figures shown below ``MIN_FIGURE_SCALE`` of their width), ``height``."""
    page = Path(page).resolve()   # a file URI needs an absolute path
    with tempfile.TemporaryDirectory() as tmp:
        # the copy sits next to the original so its relative links (CSS, images) still resolve
        probe = page.with_name(f".audit-{page.name}")
        script = (_SCRIPT.replace("MARKERS", json.dumps(list(SETUP_MARKERS)))
                  .replace("MIN_SCALE", str(MIN_FIGURE_SCALE)))
        probe.write_text(page.read_text(encoding="utf-8").replace("</body>", script + "</body>"),
                         encoding="utf-8")
        try:
            dom = _run(["--dump-dom", probe.as_uri()], Path(tmp)).stdout
        finally:
            probe.unlink(missing_ok=True)
    found = re.search(r'<pre id="adlib-audit">(.*?)</pre>', dom, re.S)
    if not found:
        msg = f"{page.name}: the audit script did not run (Chromium printed {len(dom)} characters)"
        raise RuntimeError(msg)

    return json.loads(html.unescape(found.group(1)))


def screenshot(page: Path | str, out: Path | str) -> Path:
    """The page's first screen (1280 x 900) as a PNG."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        _run([f"--screenshot={out.resolve()}", Path(page).resolve().as_uri()], Path(tmp))
    return out


def book_pages(html_dir: Path | str) -> list[Path]:
    """The chapters and the scoreboard of a built book."""
    html_dir = Path(html_dir)
    return sorted((html_dir / "chapters").glob("*.html")) + [html_dir / "scoreboard.html"]


def problems(page: Path | str, result: dict, *, needs_box: bool) -> list[str]:
    """What a reader would trip over on one audited page, in words (empty: nothing)."""
    name = Path(page).name
    out = []
    if needs_box and (result["box_top"] is None or result["box_top"] > HEIGHT):
        out.append(f"{name}: verdict box at {result['box_top']} px, not on the first screen")
    out += [f"{name}: table {w['index']} is {w['width']} px in a {w['container']} px column "
            f"({w['head']!r})" for w in result["wide"]]
    out += [f"{name}: setup code visible: {s!r}" for s in result["setup"]]
    out += [f"{name}: output wider than the column (scrolls sideways): {s!r}"
            for s in result.get("wide_output", [])]
    out += [f"{name}: figure {f['src']} shown at {f['scale']:.0%} of its size (its text shrinks "
            "with it): draw it narrower or pass it through adlib.book.figures.fit_column"
            for f in result.get("shrunk", [])]
    if result.get("split"):
        out.append(f"{name}: words broken across lines inside table cells (table: word) "
                   f"{result['split'][:6]}: give the column room, or the name a break point "
                   "(- / = + , _)")
    if result["decimals"]:
        out.append(f"{name}: table cells with more than 3 decimals: {result['decimals'][:5]}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m adlib pageaudit")
    parser.add_argument("html", help="the built book's HTML folder (book/_build/html)")
    parser.add_argument("--screenshots", help="folder for first-screen PNGs")
    args = parser.parse_args(argv)
    found = []
    for page in book_pages(args.html):
        result = audit(page)

        chapter = chapter_of(page)
        needs_box = chapter is not None and chapter.paper
        issues = problems(page, result, needs_box=needs_box)
        found += issues
        print(f"{page.name}: box at {result['box_top']} px of {result['height']}; "
              f"{len(result['tables'])} tables; {len(issues)} problems")
        if args.screenshots:
            screenshot(page, Path(args.screenshots) / f"{page.stem}.png")
    for line in found:
        print("  ", line)
    return 1 if found else 0
