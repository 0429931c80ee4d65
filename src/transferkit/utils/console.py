"""The rich console every command prints its tables with."""

from __future__ import annotations

import os
from typing import Any

from rich.console import Console

from transferkit.utils.ranks import is_rank_zero

# rich falls back to 80 columns when output is not a terminal (a log file, a pipe, CI); tables of many
# backbones then wrap cell by cell. Outside a terminal, print at this width unless COLUMNS says otherwise.
PIPE_WIDTH = 200


def make_console(**kwargs: Any) -> Console:
    """``rich.console.Console(**kwargs)``, at least ``PIPE_WIDTH`` wide when not writing to a terminal."""
    console = Console(**{"quiet": not is_rank_zero(), **kwargs})  # under a launcher, rank 0 prints
    if not console.is_terminal and "COLUMNS" not in os.environ and "width" not in kwargs:
        console.width = max(console.width, PIPE_WIDTH)
    return console
