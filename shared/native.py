"""Quieting native libraries, at the source: TensorFlow (and LiteRT) log from C++, not through Python logging.

- TF_CPP_MIN_LOG_LEVEL, set before TensorFlow loads, silences TF's own C++ lines while it runs (the `E0000 ...
  node_def_util` notice on every Keras fit, the failed CUDA probe).
- Some lines ignore it: absl's "before absl::InitializeLog()" warning and the CUDA stub's "Could not find cuda
  drivers", both printed during `import tensorflow`, and LiteRT's "Created TensorFlow Lite XNNPACK delegate". Only
  a redirect of file descriptor 2 reaches them, so `native_stderr_silenced` wraps those calls and nothing longer.
- Python-side chatter (absl's and TensorFlow's loggers) goes through logging levels.

`cassava --debug` (debug logging on) shows all of it.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading

_silenced_lock = threading.Lock()
_silenced = {"depth": 0, "saved": None}


@contextlib.contextmanager
def native_stderr_silenced(enabled: bool = True):
    """Send fd 2 to /dev/null meanwhile; what goes wrong still arrives as a Python exception. Thread-safe: fd 2 is
    the process's, so overlapping uses (a server's model-store watcher loading a version while a request logs) share
    one redirect, restored when the last one ends; keep the wrapped calls short (other threads' lines are lost then).
    """
    if not enabled:
        yield
        return
    with _silenced_lock:
        if _silenced["depth"] == 0:
            sys.stderr.flush()
            saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)
            os.close(devnull)
            _silenced["saved"] = saved
        _silenced["depth"] += 1
    try:
        yield
    finally:
        with _silenced_lock:
            _silenced["depth"] -= 1
            if _silenced["depth"] == 0:
                os.dup2(_silenced["saved"], 2)
                os.close(_silenced["saved"])
                _silenced["saved"] = None


def debugging() -> bool:
    """`cassava --debug` turns on debug logging: then native output is shown too."""
    return logging.getLogger().isEnabledFor(logging.DEBUG)


def quiet_native_environment(debug: bool = None) -> None:
    """Before TensorFlow loads: its C++ log level (read once, at load) is 3 (none) normally, 0 (all) with --debug.

    Also for child processes, which inherit the environment."""
    debug = debugging() if debug is None else debug
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0" if debug else "3"


def import_tensorflow():
    """TensorFlow, imported quietly unless --debug (the one place the project imports it); errors still raise."""
    if "tensorflow" in sys.modules and hasattr(sys.modules["tensorflow"], "constant"):
        return sys.modules["tensorflow"]
    debug = debugging()
    quiet_native_environment(debug)
    with native_stderr_silenced(not debug):  # the lines TF_CPP_MIN_LOG_LEVEL does not reach: import time only
        import tensorflow as tf
    if not debug:
        tf.get_logger().setLevel(logging.ERROR)
        from absl import logging as absl_logging  # a TensorFlow dependency; SavedModel export warns through it

        absl_logging.set_verbosity(absl_logging.ERROR)
    return tf
