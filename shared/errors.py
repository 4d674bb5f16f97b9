"""Errors the CLI turns into one clear line and exit code 2."""
from __future__ import annotations

import sys
from typing import Callable


class CassavaError(Exception):
    """A user-facing error: bad arguments, missing model, unreadable data. Printed as one line."""


class BadImage(CassavaError):
    """An image that cannot be decoded or is unsafe to decode (corrupt, not an image, too many pixels)."""


def run_command(command: str, body: Callable[[], int], debug: bool = False) -> int:
    """A command's exit code: BODY's, 2 with one line on stderr for a CassavaError (re-raised with --debug), 130 on
    Ctrl-C. Shared by `cassava` and the `cassava serve` supervisor, which must not import the CLI."""
    try:
        return body()
    except CassavaError as exc:
        if debug:
            raise
        print(f"{command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{command}: interrupted", file=sys.stderr)
        return 130
