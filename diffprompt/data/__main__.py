"""Command line: check a data set on disk, or list the registry.

    python -m diffprompt.data list [--root R]
    python -m diffprompt.data check NAME [--split S] [--root R] [--non-strict] [--quiet]

``check`` opens the data set (folder, layout, split, label files) and reads every image
and label (readable, same size, known label values). It prints a summary and exits 0, or
prints every problem and exits 1.
"""

from __future__ import annotations

import argparse
import sys

from diffprompt.data import (
    DATASETS,
    DEFAULT_SPLIT,
    SPLITS,
    DatasetError,
    available_splits,
    build_dataset,
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m diffprompt.data", description=__doc__.split("\n")[0]
    )
    sub = p.add_subparsers(dest="command", required=True)
    ls = sub.add_parser("list", help="print registry names and their splits")
    ls.add_argument("--root", default=None, help="also show the splits found under this data root")
    ck = sub.add_parser("check", help="read every file of a data set split and report problems")
    ck.add_argument("name", help=f"registry name, one of {list(DATASETS)}")
    ck.add_argument("--split", default=None, help="split (default: the data set's default)")
    ck.add_argument(
        "--root", default=None, help="data root (default: $DIFFPROMPT_DATA or the miniature)"
    )
    ck.add_argument(
        "--non-strict", action="store_true", help="map unknown label values to 255, not errors"
    )
    ck.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default: sys.argv[1:]); return the exit code (0 = OK)."""
    args = _parser().parse_args(argv)
    if args.command == "list":
        for name in DATASETS:
            line = f"{name:<12} splits: {', '.join(SPLITS[name])} (default {DEFAULT_SPLIT[name]})"
            if args.root is not None:
                try:
                    found = available_splits(name, args.root)
                except FileNotFoundError as e:  # the data root itself is missing
                    print(f"error: {e}", file=sys.stderr)
                    return 1
                line += f"; on disk: {', '.join(found) or '-'}"
            print(line)
        return 0
    try:
        ds = build_dataset(
            args.name, split=args.split, root=args.root, strict_labels=not args.non_strict
        )
        summary = ds.check(progress=not args.quiet)
    except DatasetError as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return 1
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
