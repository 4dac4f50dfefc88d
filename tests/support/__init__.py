"""Helpers shared by the tests, one module per job.

- ``geometry``: the layout's numbers and page placement, asked of the core
  (``mp_layout_get``, ``mp_layout_page_kind``, ``mp_layout_chunk_page``);
- ``format_v02``, ``format_v03``: an independent reader of the file formats,
  byte by byte from FORMAT.md, that never goes through the pager;
- ``edit``: byte editing of files (patch, read back, rewrite metadata copies);
- ``rust_fixtures``: the Rust crate's files and their manifests;
- ``pagers``: helpers over live pagers and child processes;
- ``iohooks``: pagers opened with the core's I/O hooks (fault injection);
- ``workloads``, ``powerloss``: the power-loss model over those hooks, used by
  tests/test_powerloss.py and scripts/powerloss_sim.py.

The modules import each other relatively, so the package works both as
``support`` (tests/ on sys.path, as under pytest) and as ``tests.support``
(the repository root on sys.path, as for ``python -m scripts.powerloss_sim``).
"""
