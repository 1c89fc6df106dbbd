"""Where a node's CPU went, from py-spy's collapsed stacks (peers.py --profile-node DIR).

    /work/venv/bin/python bench/stacks.py DIR/b-10000-even-1234.txt [--top 30]

Prints each frame's share of the samples, as the leaf (the line running when
sampled; compiled code shows as the Python line that called it) and
inclusive (anywhere on the stack). A reading aid: py-spy's own cost and its
sampling skew make these shares, not timings.
"""

from __future__ import annotations

import argparse
import collections


def shares(path: str) -> tuple[int, collections.Counter, collections.Counter]:
    leaf: collections.Counter = collections.Counter()
    inclusive: collections.Counter = collections.Counter()
    total = 0
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            total += n
            frames = stack.split(";")
            leaf[frames[-1]] += n
            for frame in set(frames):
                inclusive[frame] += n
    return total, leaf, inclusive


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stacks", nargs="+", help="py-spy raw output files")
    p.add_argument("--top", type=int, default=30)
    args = p.parse_args()
    for path in args.stacks:
        total, leaf, inclusive = shares(path)
        print(f"{path}: {total} samples")
        for title, counts in (("leaf", leaf), ("inclusive", inclusive)):
            print(f"-- {title}")
            for frame, n in counts.most_common(args.top):
                print(f"{100 * n / max(total, 1):5.1f} %  {frame}")


if __name__ == "__main__":
    main()
