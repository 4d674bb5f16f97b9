"""The `cassava` command: one entry point, one sub-command per job, each defined in the tier that owns it.

Sub-command modules import nothing heavy at import time (TensorFlow loads only when a command needs it).
Every user error is one line on stderr and exit code 2; `--debug` shows the full traceback.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from cassava import __version__
from cassava.shared.errors import run_command

# name -> (module with add_arguments(parser) and run(args), one-line help)
COMMANDS = {
    "predict": ("cassava.shared.client.predict", "classify images in this process or through a cloud/edge server"),
    "serve": ("cassava.shared.server.serve", "serve the model over V2 REST + gRPC with MLServer (cloud or edge tier)"),
    "convert": ("cassava.edge.convert.command",
                "convert a model to TFLite (int8/dynamic/float16), verified against the source"),
    "models": ("cassava.models", "a model store's versions: list them, roll back the serving one, restore"),
    "bundle": ("cassava.edge.bundle", "pack the edge server, its wheels and a converted model for an offline device"),
    "compare": ("cassava.shared.evaluate.compare", "accuracy comparison of the cloud model and its TFLite copies"),
    "watch": ("cassava.edge.watch", "classify camera frames or new files in a folder on the edge, offline"),
    "demo": ("cassava.demo", "the whole cloud/edge split offline, on the stand-in model, and the edge escalating to "
                          "the cloud over an emulated slow link"),
}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse shows every default itself (help texts never repeat them), except where there is none to show."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.default == argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cassava", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks and debug logs")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            if exc.name and exc.name.startswith("cassava"):
                continue  # that sub-command is not part of this install
            raise
        sub = commands.add_parser(name, help=help_text, description=help_text, formatter_class=HelpFormatter)
        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks")
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return run_command(f"cassava {args.command}", lambda: int(args.run(args) or 0), args.debug)
    except Exception as exc:  # a bug or an environment problem: still one line unless asked for more
        if args.debug:
            raise
        first = str(exc).splitlines()[0][:300] if str(exc) else ""
        print(f"cassava {args.command}: error: {type(exc).__name__}: {first} (run with --debug for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
