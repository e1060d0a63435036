"""Command line: train a DG head and print its mIoU table.

    python -m diffprompt.dg [KEY=VALUE ...] [--preset paper] [--results DIR] [--retrain]
    accelerate launch --num_processes 8 -m diffprompt.dg --preset paper data_root=/datasets

KEY=VALUE pairs set TrainConfig fields (see diffprompt.dg.config); with a preset they win
over its values (the run prints the preset's fields it kept and those overridden). A
finished run of the same configuration is reused (its folder:
results/runs/dg/<source>-<mode>-<hash>/), an interrupted one resumed.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from diffprompt.dg.config import TrainConfig, check_config, parse_overrides, with_preset
from diffprompt.dg.runs import train_dg
from diffprompt.settings import describe


def format_rows(rows: list[dict]) -> str:
    """Return rows of equal keys as a Markdown table (floats with two decimals)."""
    keys = list(rows[0])
    cells = [[f"{r[k]:.2f}" if isinstance(r[k], float) else str(r[k]) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    lines = ["| " + " | ".join(k.ljust(w) for k, w in zip(keys, widths, strict=True)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for c in cells:
        lines.append("| " + " | ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None, config: type = TrainConfig) -> None:
    """Run the command line on ``argv`` (default: sys.argv); ``config``: the configuration
    class whose fields KEY=VALUE sets."""
    p = argparse.ArgumentParser(
        prog="python -m diffprompt.dg",
        description="Train a DG segmentation head on the source and evaluate on the targets "
        "(one process, or several under `accelerate launch`).",
        epilog="settings (KEY=VALUE, TrainConfig):\n  " + "\n  ".join(describe(config)),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="TrainConfig fields")
    p.add_argument("--preset", default="", help="'' or 'paper'")
    p.add_argument("--results", default="", help="results folder (default: results/)")
    p.add_argument("--retrain", action="store_true", help="start over even if finished")
    a = p.parse_args(argv)
    try:
        given = parse_overrides(a.overrides, config)
        cfg, preset = with_preset(config(**given), a.preset, given)  # KEY=VALUE wins
        check_config(cfg)
    except (TypeError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    if a.preset:
        print(preset, flush=True)
    try:
        trainer = train_dg(cfg, a.results or None, retrain=a.retrain)
        sets = trainer.eval_sets()
        cms = trainer.evaluate(sets)
    except (ValueError, FileNotFoundError, PermissionError) as e:  # bad input: says what to do
        raise SystemExit(f"error: {e}") from None
    if trainer.acc.is_main_process and cms:
        print(format_rows(trainer.miou_rows(cms, sets)))


if __name__ == "__main__":
    main()
