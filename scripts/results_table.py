"""Print a markdown results table from run folders.

    python scripts/results_table.py outputs/            # every run below outputs/
    python scripts/results_table.py RUN_DIR [RUN_DIR ...]
    python scripts/results_table.py --methods docs/results/   # the README's methods table

Accuracies are last-epoch test top-1 in percent; every row says its epochs,
batch size, backbone, hardware and seed. Where several seeds of one recipe
are found (e.g. `-m seed=0,1,2`), a second table pools them: mean ± sample
standard deviation with n.
"""

import argparse
import sys
from pathlib import Path

from ssl_runner.methods.registry import METHOD_INFO
from ssl_runner.report import find_summaries, load_summary, markdown_table
from ssl_runner.seed_spread import POOLED_HEADING, has_repeated_seeds, methods_table, pooled_table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", type=Path, help="run folders, or folders to search for summary.json")
    parser.add_argument("--methods", action="store_true",
                        help="one row per registered method, with its paper's published figure")
    args = parser.parse_args()
    summaries = find_summaries(args.paths)
    if not summaries:
        print(f"no summary.json under {', '.join(map(str, args.paths))}", file=sys.stderr)
        return 1
    if args.methods:
        import ssl_runner.methods  # noqa: F401  (registers every method)

        print(methods_table(summaries, METHOD_INFO))
    else:
        print(markdown_table(summaries))
        loaded = [load_summary(p) for p in summaries]
        if has_repeated_seeds(loaded):  # several seeds of one recipe: their spread too
            print(f"\n{POOLED_HEADING}\n\n{pooled_table(loaded)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
