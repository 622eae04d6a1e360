"""Command line: ``python -m adlib <command>``.

    python -m adlib data embedded --out DIR --seed S   write the embedded default data set
    python -m adlib bench metrics                      pixel AUROC speed vs scikit-learn
    python -m adlib bench baseline                     kNN baseline per embedded category
    python -m adlib bench patchsvdd-nn                 Patch SVDD NN scoring vs sklearn / official
    python -m adlib bench patchsvdd-embed              dense embeddings: one pass vs patch by patch
    python -m adlib study <paper> --grid study ...     run / resume a paper's ablation grid
    python -m adlib gpucheck --out DIR                 every chapter's paper profile, timed on a GPU
    python -m adlib pageaudit book/_build/html         the built book as a reader sees it (Chromium)
    python -m adlib stats coverage                     the coverage simulation behind the intervals
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from adlib.analysis.bench import bench_baseline, bench_metrics
from adlib.analysis.stats import coverage_markdown, coverage_table
from adlib.book.pageaudit import main as audit_main
from adlib.chapters.cse_patch_svdd.bench import (
    bench_patchsvdd_embed,
    bench_patchsvdd_nn,
)
from adlib.chapters.gpucheck import gpucheck
from adlib.chapters.profiles import resolve
from adlib.data.embedded import generate_embedded
from adlib.data.sources import choose_categories, resolve_root
from adlib.study.engine import parse_value, run_study
from adlib.study.load import load_study
from adlib.study.provenance import ProvenanceError
from adlib.study.report import rejudge, results_dir, write_outputs
from adlib.study.spec import StudyError
from adlib.study.verify import fingerprint, provenance_table, verify


def _data_embedded(args: argparse.Namespace) -> None:
    root = generate_embedded(args.out, seed=args.seed)
    print(f"embedded default written to {root}")


def _bench_metrics(args: argparse.Namespace) -> None:
    bench_metrics(n_maps=args.n_maps, size=args.size)


def _bench_baseline(args: argparse.Namespace) -> None:
    bench_baseline(data_root=args.data_root, image_size=args.image_size, seed=args.seed)


def _bench_patchsvdd_nn(args: argparse.Namespace) -> None:
    bench_patchsvdd_nn(image_size=args.image_size, category=args.category, seed=args.seed,
                       n_bank=args.bank_images, n_query=args.query_images)


def _bench_patchsvdd_embed(args: argparse.Namespace) -> None:
    bench_patchsvdd_embed(image_size=args.image_size, n_images=args.images)


def _study(args: argparse.Namespace) -> None:
    study = load_study(args.paper)
    if args.rejudge:
        for path in rejudge(study.paper, args.out):
            print(f"claims judged again: {path}")
        return
    if args.verify:
        _verify(study, args)
        return
    cfg = resolve(study.paper, args.profile, dataset=args.dataset, data_root=args.data_root,
                  epochs=args.epochs)
    protocol = study.protocol(cfg)
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in protocol:
            msg = f"--set {key}: not a setting of {study.paper} ({', '.join(sorted(protocol))})"
            raise SystemExit(msg)
        protocol[key] = parse_value(value)
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else cfg.seeds
    root = resolve_root(cfg.dataset, cfg.data_root, seed=args.data_seed)
    wanted = [c.strip() for c in args.categories.split(",")] if args.categories else cfg.categories
    categories = choose_categories(cfg.dataset, root, wanted)
    grid = args.grid or cfg.grid
    out = args.out or f"runs/study/{study.paper}"
    command = "python -m adlib " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    result = run_study(args.paper, grid, protocol=protocol, seeds=seeds, categories=categories,
                       dataset=cfg.dataset, data_root=root, out=out, executor=args.executor,
                       workers=args.workers, device=args.device, profile=args.profile,
                       run=not args.summarise, include_stale=args.include_stale,
                       test_curve=args.test_curve, refuse_dirty=not args.allow_dirty,
                       fingerprint=lambda: _fingerprint_digest(study, root),
                       slurm={"cluster": args.slurm_cluster, "partition": args.partition,
                              "time_min": args.time_min, "gpus": args.gpus, "cpus": args.cpus})
    result = write_outputs(result, paper=args.paper, grid=grid, out=out, protocol=protocol,
                           seeds=seeds, categories=categories, dataset=cfg.dataset,
                           command=command, profile=args.profile)
    print(result.summary_path.read_text())
    if result.stale:
        revisions = sorted({r.get("revision", "?") for r in result.stale})
        print(f"stale: {len(result.stale)} rows of these settings were made by other code "
              f"(revisions {', '.join(revisions)}; model hash differs) and were "
              f"{'included' if args.include_stale else 'not reused'}.")
    print(f"run record: {result.record_path}")
    print(result.summary_path)


def _fingerprint_digest(study, root) -> str | None:
    if study.fingerprint is None:
        return None
    printed = fingerprint(study)
    print(f"{study.paper}: fingerprint {printed['digest']} ({printed['seconds']:.1f} s)", flush=True)
    return printed["digest"]


def _verify(study, args: argparse.Namespace) -> None:
    out = args.out or results_dir(study.paper)
    started = time.perf_counter()
    try:
        verify(study.paper, folder=out, budget_s=args.budget, workers=args.workers,
               allow_dirty=args.allow_dirty)
    except ProvenanceError as err:
        raise SystemExit(str(err)) from None
    print(provenance_table(study.paper, out).to_string(index=False))
    print(f"{study.paper}: verify took {time.perf_counter() - started:.0f} s")


def _stats_coverage(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    text = coverage_markdown(coverage_table(reps=args.reps, seed=args.seed), args.reps)
    print(text)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
        print(f"written to {args.out} ({time.perf_counter() - started:.0f} s)")


def _gpucheck(args: argparse.Namespace) -> None:
    gpucheck(args.out, device=args.device, tiny=args.tiny, steps=args.steps)


def _pageaudit(args: argparse.Namespace) -> None:
    argv = [args.html] + (["--screenshots", args.screenshots] if args.screenshots else [])
    if audit_main(argv):
        raise SystemExit(1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m adlib", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="data set tools").add_subparsers(dest="what", required=True)
    emb = data.add_parser("embedded", help="write the embedded default data set")
    emb.add_argument("--out", required=True, help="folder to write into")
    emb.add_argument("--seed", type=int, default=0)
    emb.set_defaults(func=_data_embedded)

    bench = sub.add_parser("bench", help="benchmarks").add_subparsers(dest="what", required=True)
    bm = bench.add_parser("metrics", help="pixel AUROC vs scikit-learn on ~50 M pixels")
    bm.add_argument("--n-maps", type=int, default=760)
    bm.add_argument("--size", type=int, default=256)
    bm.set_defaults(func=_bench_metrics)
    bb = bench.add_parser("baseline", help="kNN baseline image AUROC per embedded category")
    bb.add_argument("--data-root", default=None, help="MVTec-layout root (default: embedded)")
    bb.add_argument("--image-size", type=int, default=256)
    bb.add_argument("--seed", type=int, default=0)
    bb.set_defaults(func=_bench_baseline)
    bp = bench.add_parser("patchsvdd-nn", help="Patch SVDD nearest-neighbour scoring vs "
                          "scikit-learn brute force, the official path and the sgemm rate")
    bp.add_argument("--image-size", type=int, default=256)
    bp.add_argument("--category", default="brick")
    bp.add_argument("--seed", type=int, default=0)
    bp.add_argument("--bank-images", type=int, default=20, help="training images in the bank")
    bp.add_argument("--query-images", type=int, default=5, help="test images queried")
    bp.set_defaults(func=_bench_patchsvdd_nn)
    be = bench.add_parser("patchsvdd-embed", help="dense Patch SVDD embeddings: one pass vs patch by patch")
    be.add_argument("--image-size", type=int, default=256)
    be.add_argument("--images", type=int, default=2)
    be.set_defaults(func=_bench_patchsvdd_embed)

    st = sub.add_parser("study", help="run / resume a paper's ablation grid, then summarise it")
    st.add_argument("paper", help="paper key (each adlib/chapters/<paper>/), or a module declaring STUDY")
    st.add_argument("--grid", default=None, help="grid name (default: the profile's grid)")
    st.add_argument("--profile", default="study", help="profile giving the defaults (study)")
    st.add_argument("--seeds", default=None, help="comma-separated (default: the profile's)")
    st.add_argument("--categories", default=None, help="comma-separated (default: the profile's, else all)")
    st.add_argument("--dataset", default=None)
    st.add_argument("--data-root", default=None)
    st.add_argument("--data-seed", type=int, default=0, help="seed of the embedded data set")
    st.add_argument("--epochs", type=int, default=None, help="override the profile's epochs")
    st.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override one protocol setting (repeatable), e.g. --set lr=1e-3")
    st.add_argument("--executor", choices=("serial", "local", "slurm"), default="serial")
    st.add_argument("--workers", type=int, default=1, help="processes (local) / array jobs at once (slurm)")
    st.add_argument("--device", default="auto")
    st.add_argument("--out", default=None, help="study folder (default runs/study/<paper>)")
    st.add_argument("--summarise", action="store_true", help="only summarise the rows there")
    st.add_argument("--rejudge", action="store_true",
                    help="judge the claims of the committed records again from their rows "
                         "(after a change to how claims are judged; trains nothing); --out: "
                         "another folder")
    st.add_argument("--test-curve", action="store_true",
                    help="also score the test split after every epoch (reporting only; rows "
                         "without a curve are made again)")
    st.add_argument("--include-stale", action="store_true",
                    help="summarise rows made by other code too (said so in the claims)")
    st.add_argument("--verify", action="store_true",
                    help="link the committed rows to the current code (fingerprint + a seeded "
                         "draw of rows rerun) or say which metric moved; --out: another folder")
    st.add_argument("--budget", type=float, default=600.0,
                    help="--verify: seconds of recorded training to rerun per worker (600)")
    st.add_argument("--allow-dirty", action="store_true",
                    help="run even with uncommitted changes to hashed code (rows marked dirty)")
    st.add_argument("--partition", default=None, help="slurm partition")
    st.add_argument("--time-min", type=int, default=120, help="slurm time limit per task")
    st.add_argument("--gpus", type=int, default=0, help="slurm GPUs per task")
    st.add_argument("--cpus", type=int, default=2, help="slurm CPUs per task")
    st.add_argument("--slurm-cluster", default="slurm",
                    help="submitit cluster: slurm, or local to try the path on this machine")
    st.set_defaults(func=_study)

    stp = sub.add_parser("stats", help="the book's statistics")
    stats_sub = stp.add_subparsers(dest="stats_command", required=True)
    cov = stats_sub.add_parser("coverage", help="coverage of the candidate intervals on the "
                                                "book's designs (simulated)")
    cov.add_argument("--reps", type=int, default=2000, help="simulated studies per design")
    cov.add_argument("--seed", type=int, default=0)
    cov.add_argument("--out", default=None, help="write the Markdown table here, e.g. "
                                                 "adlib/resources/results/coverage.md")
    cov.set_defaults(func=_stats_coverage)

    gc = sub.add_parser("gpucheck", help="time every chapter's paper profile (shortened) on this machine")
    gc.add_argument("--out", default="runs/gpucheck", help="folder for the tree and the report")
    gc.add_argument("--device", default="auto")
    gc.add_argument("--tiny", action="store_true", help="64 px, 2 steps: the same path in seconds")
    gc.add_argument("--steps", type=int, default=None, help="training steps per chapter (300)")
    gc.set_defaults(func=_gpucheck)

    pa = sub.add_parser("pageaudit", help="read the built book in headless Chromium: verdict box "
                        "on the first screen, tables that fit, no setup code, no long decimals")
    pa.add_argument("html", help="the built book's HTML folder (book/_build/html)")
    pa.add_argument("--screenshots", help="folder for first-screen PNGs")
    pa.set_defaults(func=_pageaudit)

    args = parser.parse_args(argv)

    try:
        args.func(args)
    except (StudyError, ProvenanceError) as err:   # a refusal or bad option: its message, no traceback
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    main(sys.argv[1:])
