"""Durability modes, transactions, call overhead, bulk calls and bytes per commit.

Run by hand: python benchmarks/bench_durability.py [--dir DIR] [--quick] [--only GROUP]
(the same suite as ``python -m mappedpages bench``; see benchmarks/suite.py for
what each row measures and which floor it stands beside).
"""

from __future__ import annotations

import sys

from suite import main  # benchmarks/suite.py, beside this script

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
