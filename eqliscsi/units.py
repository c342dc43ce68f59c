"""Sizes as the Group CLI writes and reads them.

The group uses binary units: 1GB = 1024MB, 1TB = 1024GB.  Output sizes are auto-scaled
with up to two decimals and the unit glued on (``0MB``, ``1.01GB``, ``5.21TB``); with
``cli-settings displayinMB on`` they are plain MB.  A bare number is MB.

Every size the client returns is an ``int`` number of MB, **rounded up** (the rule
Cinder's PS driver used: ``123.5GB`` -> 126464 MB, so 124 GB).  The rounding is done in
decimal arithmetic, so ``1.01GB`` is exactly 1034.24 MB -> 1035 MB, which also happens to
be the real size of a "1GB" volume (15 MB pages).  Two decimals of a TB are about 10 GB,
so values parsed from auto-scaled output are approximate at that precision.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal
from typing import Dict, Union

from eqliscsi.errors import InvalidValue

MB_PER_UNIT: Dict[str, int] = {"": 1, "M": 1, "MB": 1, "G": 1024, "GB": 1024,
                               "T": 1024 * 1024, "TB": 1024 * 1024}

_OUTPUT_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s?(MB|GB|TB|M|G|T)?", re.IGNORECASE)
_INPUT_SIZE = re.compile(r"([1-9]\d{0,11})(MB|GB|TB)", re.IGNORECASE)


def parse_size_mb(text: str) -> int:
    """MB in a size printed by the group (``1.01GB``, ``512MB``, ``0``), rounded up."""
    match = _OUTPUT_SIZE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not a size: {text!r}")
    number, unit = match.group(1), (match.group(2) or "").upper()
    return math.ceil(Decimal(number) * MB_PER_UNIT[unit])


def size_argument(size: Union[int, str]) -> str:
    """The CLI token for a size: an ``int`` number of MB, or ``N`` + ``MB``/``GB``/``TB``."""
    if isinstance(size, bool):
        raise InvalidValue(f"invalid size {size!r}")
    if isinstance(size, int):
        if not 0 < size < 10**12:
            raise InvalidValue(f"invalid size {size!r}: must be a positive number of MB")
        return f"{size}MB"
    match = _INPUT_SIZE.fullmatch(size) if isinstance(size, str) else None
    if match is None:
        raise InvalidValue(f"invalid size {size!r}: expected e.g. 1024MB, 10GB or 2TB")
    return match.group(1) + match.group(2).upper()

