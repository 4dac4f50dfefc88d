"""``python -m mappedpages``: the command-line tool.

The commands (``info``, ``check``, ``map``, ``demo``, ``bench``) live in
:mod:`mappedpages._cli`; ``python -m mappedpages --help`` lists them and
``python -m mappedpages --version`` prints the library's version.
"""

from __future__ import annotations

import sys

from mappedpages._cli import demo, main

__all__ = ["demo", "main"]

if __name__ == "__main__":
    sys.exit(main())
