# Type stub for the cffi extension built from csrc/ by build_ffi.py.
from typing import Any

ffi: Any
lib: Any
