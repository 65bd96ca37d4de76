"""Command line of the search application.

    python -m lightning_modules.search index build <model> <image folder | manifest> --out <dir> [--kind flat|ivf|hnsw]
    python -m lightning_modules.search index add <dir> <image folder | manifest>
    python -m lightning_modules.search search --index <dir> "<text>" [-k 10] [--json]
    python -m lightning_modules.search search --index <dir> --image <path> [-k 10] [--json]
    python -m lightning_modules.search serve --index <dir> [--index <dir2>] [--port 8000]
    python -m lightning_modules.search demo [--port 8000]        # synthetic test split + the newest default run

<model>: a train.py checkpoint (.ckpt), an exported open_clip folder, or <open_clip name>:<weights file>. Queries
use the model the index was built with (recorded in its meta.json), unless --model names another; a model with
different weights is refused.
"""

from __future__ import annotations

import argparse
import json
import sys

from tqdm.auto import tqdm

from lightning_modules.search import load_scorer
from lightning_modules.search.index import SearchIndex, read_collection


def _bar(total: int, desc: str):
    bar = tqdm(total=total, desc=desc, unit=" images", dynamic_ncols=True)
    return bar, bar.update


def cmd_build(args) -> None:
    scorer = load_scorer(args.model, args.device, args.batch_size)
    items = read_collection(args.collection)
    bar, update = _bar(len(items), "embedding")
    index = SearchIndex.build(
        scorer,
        args.model,
        args.collection,
        args.out,
        kind=args.kind,
        nlist=args.nlist,
        progress=update,
        items=items,
    )
    bar.close()
    index.save()
    print(
        f"index: {index.meta['count']} images ({index.meta.get('skipped', 0)} skipped), "
        f"{len(index.text_rows)} captions, kind {args.kind}, dim {index.meta['dim']} -> {args.out}"
    )


def cmd_add(args) -> None:
    index = SearchIndex.load(args.index)
    scorer = load_scorer(args.model or index.meta["model"], args.device, args.batch_size)
    items = read_collection(args.collection)
    bar, update = _bar(len(items), "embedding")
    n = index.add_items(scorer, items, progress=update)
    bar.close()
    index.save()
    print(f"added {n} images -> {index.meta['count']} in {args.index}")


def cmd_search(args) -> None:
    index = SearchIndex.load(args.index)
    scorer = load_scorer(args.model or index.meta["model"], args.device)
    if args.image:
        hits = index.search_image(scorer, args.image, k=args.k)
    elif args.text is not None:
        hits = index.search_text(scorer, args.text, k=args.k)
    else:
        raise SystemExit("search: give a text query or --image <path>")
    rows = [{"rank": r + 1, "score": round(s, 4), **it} for r, (s, it) in enumerate(hits)]
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print("| rank | score | id | caption |\n|---:|---:|---|---|")
    for r in rows:
        print(f"| {r['rank']} | {r['score']:.4f} | {r['id']} | {r.get('caption') or ''} |")


def cmd_serve(args) -> None:
    import uvicorn

    from lightning_modules.search.server import create_app

    app = create_app(args.index, model=args.model, device=args.device)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


def cmd_demo(args) -> None:
    from lightning_modules.search.demo import demo_indexes

    args.index = demo_indexes(args.root)
    args.model = None
    cmd_serve(args)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m lightning_modules.search",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--device", default="auto")
    common.add_argument("--batch-size", type=int, default=256)

    idx = sub.add_parser("index", help="build or extend an index").add_subparsers(
        dest="action", required=True
    )
    b = idx.add_parser("build", parents=[common])
    b.add_argument("model")
    b.add_argument("collection")
    b.add_argument("--out", required=True)
    b.add_argument("--kind", default="flat", choices=["flat", "ivf", "hnsw"])
    b.add_argument("--nlist", type=int, default=None, help="ivf cells (default 4*sqrt(n))")
    b.set_defaults(fn=cmd_build)
    a = idx.add_parser("add", parents=[common])
    a.add_argument("index")
    a.add_argument("collection")
    a.add_argument("--model", default=None)
    a.set_defaults(fn=cmd_add)

    s = sub.add_parser("search", parents=[common])
    s.add_argument("text", nargs="?")
    s.add_argument("--index", required=True)
    s.add_argument("--image", default=None)
    s.add_argument("--model", default=None)
    s.add_argument("-k", type=int, default=10)
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_search)

    for name, fn in (("serve", cmd_serve), ("demo", cmd_demo)):
        p = sub.add_parser(name, parents=[common])
        if name == "serve":
            p.add_argument("--index", action="append", required=True, help="one, or two for side by side")
            p.add_argument("--model", default=None)
        else:
            p.add_argument("--root", default="logs/search_demo")
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument("--port", type=int, default=8000)
        p.set_defaults(fn=fn)

    args = ap.parse_args(argv)
    try:
        args.fn(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from e


if __name__ == "__main__":
    main()
