"""Locates the in-sandbox driver, ``sandbox_driver.py``, which ships by source (not imported here)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

__all__ = ["DRIVER_PATH", "driver_source"]

DRIVER_PATH = Path(__file__).with_name("sandbox_driver.py")


@lru_cache(maxsize=1)
def driver_source() -> bytes:
    """The driver's source, exactly as it is sent to a sandbox."""
    return DRIVER_PATH.read_bytes()

