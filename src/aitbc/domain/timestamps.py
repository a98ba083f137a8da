"""Integer Unix seconds, the time format of signed objects (receipts, transactions,
blocks: DESIGN.md section 3)."""

from __future__ import annotations

import math
from datetime import datetime


def unix_seconds(moment: datetime) -> int:
    """``moment`` (timezone-aware) as whole Unix seconds, rounded down."""
    return math.floor(moment.timestamp())
