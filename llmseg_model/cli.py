"""Shared behaviour of the command-line entry points."""

from __future__ import annotations

import logging
from typing import Any, Callable

logger = logging.getLogger(__name__)


def exit_on_bad_input(run: Callable[[list[str] | None], Any], argv: list[str] | None = None) -> None:
    """Run a CLI; bad input ends with its message and exit status 2, not a traceback."""
    try:
        run(argv)
    except (ValueError, FileNotFoundError, KeyError) as err:
        logger.error("%s", err.args[0] if isinstance(err, KeyError) and err.args else err)
        raise SystemExit(2) from None
