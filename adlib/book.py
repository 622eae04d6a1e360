"""Builds the book: execute the notebooks with papermill, write the generated pages, vendor
MathJax, run Jupyter Book.

``make book`` calls ``python -m adlib book build --profile cpu``; the steps are separate
functions so tests can run them on a temporary copy of ``book/``:

1. :func:`execute_notebooks` runs every ``notebooks/*.ipynb`` under one profile into
   ``book/chapters/`` and times each one;
2. :func:`write_scoreboard` turns run records into the "Reproduction scoreboard" page;
3. :func:`write_status` writes the status page (times, versions, hardware, revision), and
   :func:`write_deviations` the appendix of every chapter's declared deviations from its paper;
4. :func:`write_toc` lists the chapters that exist, and :func:`write_chapter_pages` the parts of
   the introduction and the API page that list them (all from the registry, :mod:`adlib.papers`);
5. :func:`vendor_mathjax` copies MathJax 3 from the npm registry so formulas render offline;
6. :func:`build_html` runs ``jupyter-book build`` with warnings as errors.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

from adlib.resources import resource_path

REPO = Path(__file__).resolve().parent.parent


#: Packages whose versions the status page lists.
STATUS_PACKAGES = ("torch", "torchvision", "timm", "numpy", "scikit-learn", "scikit-image",
                   "pandas", "matplotlib", "papermill", "jupyter-book", "pytorch-msssim")


def notebook_paths(notebooks_dir: Path | str = REPO / "notebooks") -> list[Path]:
    """The book's notebooks in chapter order: those of the registered chapters
    (:func:`adlib.papers.chapters`) that are written. A notebook no chapter declares is an error,
    so a chapter cannot be left out of the registry by mistake."""
    from adlib.papers import chapters

    notebooks_dir = Path(notebooks_dir)
    paths = [notebooks_dir / c.notebook for c in chapters() if c.notebook]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        msg = (f"chapters declare notebooks that do not exist: {', '.join(missing)}; write them, "
               "or declare notebook=None in the chapter's CHAPTER until they exist")
        raise FileNotFoundError(msg)
    declared = {p.name for p in paths}
    stray = sorted(p.name for p in notebooks_dir.glob("[0-9][0-9]_*.ipynb") if p.name not in declared)
    if stray:
        msg = (f"notebooks {', '.join(stray)} in {notebooks_dir} belong to no chapter: declare "
               "CHAPTER = Chapter(key=..., title=..., notebook=...) in adlib/studies/<paper>.py")
        raise ValueError(msg)
    return paths


def execute_notebooks(out_dir: Path | str, *, profile: str = "cpu",
                      notebooks_dir: Path | str = REPO / "notebooks",
                      records_dir: Path | str | None = None,
                      parameters: dict | None = None, only: list[str] | None = None,
                      kernel_name: str = "python3", paths: list[Path] | None = None) -> list[dict]:
    """Run each notebook with papermill under ``profile``; return one timing row per notebook.

    The notebooks are the chapters' (:func:`notebook_paths` of ``notebooks_dir``), or ``paths``.

    Notebooks write their run records into ``records_dir`` (their ``output_dir`` parameter).
    A failing notebook stops the build: a book with a broken chapter is worse than none.
    """
    import papermill

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records_dir = Path(records_dir) if records_dir is not None else out_dir / "records"
    records_dir.mkdir(parents=True, exist_ok=True)
    timings = []
    # Kernels inherit the environment: inline figures (not a headless Agg backend) and
    # progress bars that print one summary line each. Restored afterwards, so a caller
    # (e.g. pytest) keeps its own settings.
    kernel_env = {"MPLBACKEND": "module://matplotlib_inline.backend_inline",
                  "ADLIB_PROGRESS": "summary"}
    saved = {k: os.environ.get(k) for k in kernel_env}
    os.environ.update(kernel_env)
    try:
        for path in paths if paths is not None else notebook_paths(notebooks_dir):
            path = Path(path)
            if only and path.stem not in only:
                continue
            params = {"profile": profile, "output_dir": str(records_dir.resolve())}
            params.update(parameters or {})
            start = time.perf_counter()
            print(f"[book] executing {path.name} (profile {profile}) ...", flush=True)
            papermill.execute_notebook(str(path), str(out_dir / path.name), parameters=params,
                                       cwd=str(path.parent), kernel_name=kernel_name,
                                       progress_bar=False, log_output=False)
            seconds = time.perf_counter() - start
            print(f"[book] {path.name}: {seconds:.1f} s", flush=True)
            timings.append({"notebook": path.name, "profile": profile,
                            "seconds": round(seconds, 1)})
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    (out_dir / "timings.json").write_text(json.dumps(timings, indent=2))
    return timings


def _read_records(folders: list[Path]) -> list[dict]:
    records = []
    for folder in folders:
        for path in sorted(Path(folder).glob("**/*.json")):
            try:
                data = json.loads(path.read_text())
            except json.JSONDecodeError:
                continue
            if isinstance(data, dict) and "paper" in data and "profile" in data:
                data["_path"] = str(path)
                records.append(data)
    return records


def _md_cell(value) -> str:
    text = "" if value is None else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def claim_rows(records: list[dict]) -> dict[str, list[dict]]:
    """Each claim's rows (:func:`adlib.claims.best_rows`), grouped by claim label."""
    from adlib.claims import best_rows

    out: dict[str, list[dict]] = {}
    for row in best_rows(records):
        out.setdefault(row["claim"], []).append(row)
    return out


def verdict_counts(rows: dict[str, list[dict]], claims) -> dict[str, int]:
    """How many checks (claim x check x level) end in each verdict; an unmeasured claim counts
    once as not run yet."""
    from adlib.claims import NOT_RUN, VERDICTS

    counts = dict.fromkeys(VERDICTS, 0)
    for claim in claims:
        for row in rows.get(claim.label) or [{"verdict": NOT_RUN}]:
            counts[row.get("verdict", NOT_RUN)] = counts.get(row.get("verdict", NOT_RUN), 0) + 1
    return counts


def verdict_count_lines(rows: dict[str, list[dict]], claims) -> list[str]:
    """The scoreboard's count table: verdicts per paper and in all."""
    from adlib.papers import chapters

    per = {ch.short or ch.key: verdict_counts(rows, [c for c in claims if c.paper == ch.key])
           for ch in chapters() if any(c.paper == ch.key for c in claims)}
    total = verdict_counts(rows, claims)
    names = [v for v in total if total[v]]
    lines = ["| verdict | " + " | ".join(per) + " | all |", "|---" * (len(per) + 2) + "|"]
    lines += [f"| {v} | " + " | ".join(str(c[v]) for c in per.values()) + f" | **{total[v]}** |"
              for v in names]
    return ["Checks per verdict (one per claim, check and level):", "", *lines, ""]


def provenance_lines(paper: str) -> list[str]:
    """One sentence on the committed rows behind a paper's verdicts: how many are current or
    proven equivalent to today's code (``--verify``), how many are stale, how many were made
    from a tree with uncommitted changes."""
    from adlib.study.report import results_dir
    from adlib.verify import provenance_table

    if not (results_dir(paper) / "rows.jsonl").exists():
        return []
    table = provenance_table(paper)
    count = table.groupby("status")["rows"].sum().to_dict()
    parts = [f"{count[s]} {s}" for s in ("current", "verified", "unverified here", "stale") if count.get(s)]
    dirty = int(table["dirty rows"].sum())
    drift = table["environment drift"].dropna()
    if len(drift) and drift.max() > 0:
        parts.append(f"rerun here, the verified rows' own code lands up to {drift.max():.2g} "
                     "points from them: library versions (or the data cache) moved since they were made")
    return [f"Committed study rows: {int(table['rows'].sum())} ({', '.join(parts)}"
            + (f"; **{dirty} made from a tree with uncommitted changes**" if dirty else "")
            + "). *Verified*: `python -m adlib study <paper> --verify` reran a seeded sample "
            "with today's code and with the rows' own revision, and both gave the same numbers "
            "to the last bit; *stale*: made by code that is no longer the book's or from "
            "uncommitted code (rerun pending).", ""]


def write_scoreboard(out_md: Path | str, records_dirs: list[Path | str],
                     claims_path: Path | str | None = None) -> Path:
    """Write the scoreboard page: every claim of ``claims.md`` with our measurement or why not."""
    from adlib.papers import PAPERS
    from adlib.results import load_claims

    claims = load_claims(claims_path)
    records = _read_records([Path(p) for p in records_dirs if Path(p).exists()])
    rows = claim_rows(records)
    sources = sorted({r.get("profile", "?") for r in records})
    lines = [
        "# Reproduction scoreboard",
        "",
        "Each headline claim of the five papers (from `adlib/resources/paper_tables/claims.md`), the "
        "paper's number or direction, ours, and a verdict. Ours come from run records: committed "
        "`study` records (`adlib/resources/results/<paper>/`) where they exist, otherwise the book's own "
        "runs made while building this page. A direction (`A > B`) is judged on the paired "
        "differences A − B over (seed, category) pairs: *ours* is their mean with a 95 % "
        "bootstrap interval; **reproduced** when the interval lies above 0, **contradicted** "
        "below 0, **inconclusive** when it spans 0 or fewer than 6 pairs were run. Where the "
        "paper states the size of its effect, an inconclusive interval is split by power: *could "
        "not detect the paper's size* (the interval still holds the paper's difference: this "
        "study was too small to see it) or *smaller than the paper's* (the interval lies wholly "
        "below the paper's difference: the study rules that size out). *Inconclusive: "
        "the model did not learn* when "
        "the trained model does not beat its untrained self. A number measured on MVTec AD "
        "checked on the embedded default is *not comparable here*.",
        "",
        f"Run records read: {len(records)} (profiles: {', '.join(sources) or 'none'}).",
        "",
        *verdict_count_lines(rows, claims),
    ]
    for paper in PAPERS.values():
        paper_claims = [c for c in claims if c.paper == paper.key]
        if not paper_claims:
            continue
        lines += [f"## {paper.title}", "", *provenance_lines(paper.key),
                  "| # | claim | check | verdict | paper | ours | pairs | data set | profile "
                  "| hardware | revision |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for claim in paper_claims:
            measured = rows.get(claim.label)
            if not measured:
                cells = [claim.number, claim.summary, "", "not run yet", "—", "—", "—", "—",
                         "—", "—", "—"]
                lines.append("| " + " | ".join(_md_cell(c) for c in cells) + " |")
                continue
            for i, row in enumerate(measured):
                check = " · ".join(x for x in (row.get("check"), row.get("level")) if x)
                profile = (f"{row.get('profile')}, {row['epochs']} epoch{'s' * (row['epochs'] != 1)}"
                           if row.get("epochs") else row.get("profile"))
                cells = [claim.number if i == 0 else "", claim.summary if i == 0 else "",
                         check, row.get("verdict"), row.get("paper"), row.get("ours"),
                         row.get("n_pairs"), row.get("dataset"), profile, row.get("hardware"),
                         row.get("revision")]
                lines.append("| " + " | ".join(_md_cell(c) for c in cells) + " |")
        lines.append("")
    out_md = Path(out_md)
    out_md.write_text("\n".join(lines))
    return out_md


DEVIATION_COLUMNS = {"topic": "what", "paper": "the paper", "ours": "the book", "why": "why",
                     "kind": "kind", "cell": "measured by"}


def deviations_frame(paper: str):
    """A chapter's declared deviations (its study module's ``DEVIATIONS``) as a table: what
    the paper says, what the book does, why, whether it is a guess where the paper is silent,
    and the ablation cell that measures it."""
    import pandas as pd

    from adlib.papers import get_chapter

    rows = [{"topic": d.topic, "paper": d.paper + (f" ({d.source})" if d.source else ""),
             "ours": d.ours, "why": d.why, "kind": "guess" if d.guess else "choice",
             "cell": d.cell or "—"} for d in get_chapter(paper).deviations]
    return pd.DataFrame(rows, columns=list(DEVIATION_COLUMNS)).rename(columns=DEVIATION_COLUMNS)


def deviations_table(paper: str):
    """:func:`deviations_frame` styled for a chapter page (left-aligned, wrapping text)."""
    frame = deviations_frame(paper)
    return (frame.style.hide(axis="index")
            .set_properties(**{"text-align": "left", "vertical-align": "top", "font-size": "0.85em"})
            .set_table_styles([{"selector": "th", "props": "text-align: left;"}]))


def write_deviations(out_md: Path | str) -> Path:
    """The appendix page: every chapter's declared deviations from its paper, one table each."""
    from adlib.papers import chapters

    lines = ["# Deviations from the papers", "",
             "What each chapter does differently from its paper, and what it had to decide where "
             "the paper is silent (*guess*), as the chapter's study declares it. Where a cell of "
             "the chapter's study measures the paper's choice against ours, *measured by* names "
             "it (ablation / config). Each chapter shows its own table beside its verdicts.", ""]
    for chapter in chapters():
        if not chapter.paper or not chapter.notebook:
            continue
        frame = deviations_frame(chapter.key)
        lines += [f"## {chapter.number}. {chapter.title}", ""]
        if frame.empty:
            lines += ["No deviations declared yet.", ""]
            continue
        lines += ["| " + " | ".join(frame.columns) + " |", "|---" * len(frame.columns) + "|"]
        lines += ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in frame.to_numpy()]
        lines += [""]
    out_md = Path(out_md)
    out_md.write_text("\n".join(lines))
    return out_md


def package_versions(names=STATUS_PACKAGES) -> dict[str, str]:
    """Installed versions of the packages the book depends on ('not installed' if absent)."""
    from importlib import metadata

    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def write_status(out_md: Path | str, timings: list[dict],
                 gpu_report: Path | str | None = None) -> Path:
    """Write the status page: notebook execution times, versions, hardware, revision, and the
    committed GPU check (``adlib/resources/results/gpu/gpucheck.md``) or "no GPU report yet"."""
    from adlib.results import adlib_revision, hardware_info

    hw = hardware_info()
    lines = ["# Build status", "",
             f"Built {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} from adlib "
             f"revision `{adlib_revision()}`.", "",
             "## Notebook execution", "", "| notebook | profile | seconds |", "|---|---|---|"]
    lines += [f"| {t['notebook']} | {t['profile']} | {t['seconds']} |" for t in timings]
    total = sum(t["seconds"] for t in timings)
    lines += [f"| **total** | | {total:.1f} |", "", "## Hardware", "",
              "| | |", "|---|---|"]
    lines += [f"| {_md_cell(k)} | {_md_cell(v)} |" for k, v in hw.items()]
    lines += ["", "## Package versions", "", "| package | version |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in package_versions().items()]
    lines += [f"| python | {platform.python_version()} |", ""]
    report = Path(gpu_report) if gpu_report is not None else resource_path("results", "gpu", "gpucheck.md")
    lines += ["## GPU check", "",
              "`python -m adlib gpucheck --out adlib/resources/results/gpu` on a GPU: every "
              "chapter's `paper` profile, shortened, timed.", ""]
    lines += [report.read_text(), ""] if report.is_file() else [
        "No GPU report yet: no GPU was at hand when this book was built or its results were "
        "committed. The check's code path runs on the CPU in the test suite "
        "(`python -m adlib gpucheck --device cpu --tiny`).", ""]
    out_md = Path(out_md)
    out_md.write_text("\n".join(lines))
    return out_md


def write_toc(book_dir: Path | str, chapters: list[str]) -> Path:
    """Write ``_toc.yml``: intro, the executed chapters, then the generated pages."""
    lines = ["format: jb-book", "root: intro", "parts:",
             "  - caption: Chapters", "    chapters:"]
    lines += [f"      - file: chapters/{Path(c).stem}" for c in chapters]
    lines += ["  - caption: Results", "    chapters:",
              "      - file: scoreboard", "      - file: status",
              "  - caption: Reference", "    chapters:", "      - file: deviations",
              "      - file: api", ""]
    path = Path(book_dir) / "_toc.yml"
    path.write_text("\n".join(lines))
    return path


def write_chapter_pages(book_dir: Path | str) -> list[Path]:
    """Write what ``intro.md`` and ``api.md`` include from ``_generated/``: the chapter table, the
    ``paper``-profile commands and each chapter's API section, from the registry."""
    from adlib.papers import chapters

    out = Path(book_dir) / "_generated"
    out.mkdir(parents=True, exist_ok=True)
    written = [c for c in chapters() if c.notebook]
    table = ["| chapter | paper | what it adds |", "|---|---|---|"]
    table += [f"| {c.number} | {_md_cell(c.short or c.title) if c.paper else '—'} "
              f"| {_md_cell(c.summary)} |" for c in written]
    runs = ["```bash", "pip install -r requirements.txt && pip install -e ."]
    runs += [f"papermill notebooks/{Path(c.notebook).name} out.ipynb -p profile paper {args}"
             for c in written for args in c.paper_runs]
    runs += ["```"]
    api = []
    for c in written:
        modules = [m for m in (c.model, c.study) if m]
        if modules:
            api += [f"### {c.number}. {c.title}", "", "```{eval-rst}"]
            api += [f".. automodule:: {m}\n   :members:\n" for m in modules]
            api += ["```", ""]
    pages = {"chapters.md": table, "paper_runs.md": runs, "api_chapters.md": api}
    for name, lines in pages.items():
        (out / name).write_text("\n".join(lines) + "\n")
    return [out / name for name in pages]


def vendor_mathjax(book_dir: Path | str, cache_dir: Path | str = REPO / "build" / "npm") -> Path:
    """Copy MathJax 3 (from the npm registry) into ``book/_static_vendor/mathjax``.

    Sphinx loads MathJax from a CDN by default, which leaves raw TeX on an offline page.
    The copy lives outside ``_static`` because Jupyter Book adds every ``.js`` there as a
    script tag.
    """
    dest = Path(book_dir) / "_static_vendor" / "mathjax"
    if (dest / "tex-mml-chtml.js").exists():
        return dest
    cache_dir = Path(cache_dir)
    package = cache_dir / "node_modules" / "mathjax" / "es5"
    if not package.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        npm = shutil.which("npm")
        if npm is None:
            msg = ("npm is needed once to fetch MathJax 3 for offline formulas: install "
                   "Node.js/npm (e.g. `apt-get install npm`) and rerun")
            raise RuntimeError(msg)
        subprocess.run([npm, "install", "--prefix", str(cache_dir), "--no-audit", "--no-fund",
                        "--loglevel=error", "mathjax@3"], check=True)
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(package / "tex-mml-chtml.js", dest / "tex-mml-chtml.js")
    fonts = dest / "output" / "chtml" / "fonts" / "woff-v2"
    if fonts.exists():
        shutil.rmtree(fonts)
    shutil.copytree(package / "output" / "chtml" / "fonts" / "woff-v2", fonts)
    return dest


def build_html(book_dir: Path | str, *, warnings_as_errors: bool = True) -> Path:
    """Run ``jupyter-book build`` (no execution: the chapters are executed already)."""
    jb = Path(sys.executable).parent / "jupyter-book"
    cmd = [str(jb) if jb.exists() else "jupyter-book", "build", str(book_dir), "--keep-going"]
    if warnings_as_errors:
        cmd.insert(3, "-W")
    subprocess.run(cmd, check=True)
    return Path(book_dir) / "_build" / "html"


def write_pages(book_dir: Path | str, timings: list[dict], records_dir: Path | str) -> None:
    """The generated pages: scoreboard (committed records and the build's), status, deviations,
    table of contents, and the registry's parts of the introduction and API page."""
    book_dir = Path(book_dir)
    write_scoreboard(book_dir / "scoreboard.md", [resource_path("results"), records_dir])
    write_status(book_dir / "status.md", timings)
    write_deviations(book_dir / "deviations.md")
    write_toc(book_dir, [t["notebook"] for t in timings])
    write_chapter_pages(book_dir)


def build(book_dir: Path | str = REPO / "book", *, profile: str = "cpu",
          notebooks_dir: Path | str = REPO / "notebooks", parameters: dict | None = None,
          only: list[str] | None = None) -> Path:
    """All steps: execute, scoreboard, status, toc, MathJax, HTML. Returns the HTML folder."""
    book_dir = Path(book_dir)
    chapters_dir = book_dir / "chapters"
    if chapters_dir.exists():
        shutil.rmtree(chapters_dir)
    records_dir = book_dir / "_generated" / "records"
    if records_dir.exists():
        shutil.rmtree(records_dir)
    start = time.perf_counter()
    timings = execute_notebooks(chapters_dir, profile=profile, notebooks_dir=notebooks_dir,
                                records_dir=records_dir, parameters=parameters, only=only)
    write_pages(book_dir, timings, records_dir)
    vendor_mathjax(book_dir)
    html = build_html(book_dir)
    print(f"[book] built {html / 'index.html'} in {time.perf_counter() - start:.0f} s")
    return html


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m adlib.book")
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--book-dir", default=str(REPO / "book"))
    parser.add_argument("--only", nargs="*", default=None, help="notebook stems to run")
    args = parser.parse_args(argv)
    build(args.book_dir, profile=args.profile, only=args.only)


if __name__ == "__main__":
    main()
