"""setuptools entry point: only the cffi extension lives here; metadata is in pyproject.toml.

The extension uses only the stable ABI, so one wheel (abi3) serves CPython 3.9+.
"""

from setuptools import setup

setup(
    cffi_modules=["build_ffi.py:ffibuilder"],
    options={"bdist_wheel": {"py_limited_api": "cp39"}},
)
