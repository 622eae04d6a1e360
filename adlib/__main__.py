"""Command line: ``python -m adlib <command>``.

    python -m adlib data embedded --out DIR --seed S   write the embedded default data set
    python -m adlib bench metrics                      pixel AUROC speed vs scikit-learn
    python -m adlib bench baseline                     kNN baseline per embedded category
    python -m adlib bench patchsvdd-nn                 Patch SVDD NN scoring vs scikit-learn
"""

from __future__ import annotations

import argparse
import sys


def _data_embedded(args: argparse.Namespace) -> None:
    from adlib.data.embedded import generate_embedded

    root = generate_embedded(args.out, seed=args.seed)
    print(f"embedded default written to {root}")


def _bench_metrics(args: argparse.Namespace) -> None:
    from adlib.bench import bench_metrics

    bench_metrics(n_maps=args.n_maps, size=args.size)


def _bench_baseline(args: argparse.Namespace) -> None:
    from adlib.bench import bench_baseline

    bench_baseline(data_root=args.data_root, image_size=args.image_size, seed=args.seed)


def _bench_patchsvdd_nn(args: argparse.Namespace) -> None:
    from adlib.bench import bench_patchsvdd_nn

    bench_patchsvdd_nn(image_size=args.image_size, category=args.category, seed=args.seed,
                       device=args.device)


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
    bp = bench.add_parser("patchsvdd-nn", help="Patch SVDD nearest-neighbour scoring vs scikit-learn")
    bp.add_argument("--image-size", type=int, default=128)
    bp.add_argument("--category", default="brick")
    bp.add_argument("--seed", type=int, default=0)
    bp.add_argument("--device", default="auto",
                    help="where adlib's search runs: auto (CUDA if present), cpu, cuda")
    bp.set_defaults(func=_bench_patchsvdd_nn)

    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main(sys.argv[1:])
