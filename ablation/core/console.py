"""One-line messages for the person at the terminal: on stderr, without breaking a progress bar in flight."""

from __future__ import annotations

import sys

from tqdm import tqdm


def say(message: str) -> None:
    tqdm.write(message, file=sys.stderr)
    sys.stderr.flush()
