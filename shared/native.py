"""Quieting native libraries: TensorFlow and LiteRT write start-up notices straight to file descriptor 2, where
neither logging levels nor TF_CPP_MIN_LOG_LEVEL reach (TF 2.21 prints its oneDNN/CUDA lines regardless)."""
from __future__ import annotations

import contextlib
import logging
import os
import sys


@contextlib.contextmanager
def native_stderr_silenced(enabled: bool = True):
    """Send fd 2 to /dev/null meanwhile; what goes wrong still arrives as a Python exception."""
    if not enabled:
        yield
        return
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def debugging() -> bool:
    """`cassava --debug` turns on debug logging: then native output is shown too."""
    return logging.getLogger().isEnabledFor(logging.DEBUG)
