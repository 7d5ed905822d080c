"""The `llm4msr` command line. Each sub-command lives next to the code it drives and
registers itself through an `add_parser(subparsers)` function listed here."""
import argparse
import importlib
import os
import sys

from llm4msr.errors import UserFacingError
from llm4msr.files import uses_file_system_plugins
from llm4msr.quiet import quiet_libraries

# module path -> the sub-command it adds
COMMAND_MODULES = [
    "llm4msr.pipeline.data.cli",
    "llm4msr.trainer.cli",
    "llm4msr.pipeline.cli",
    "llm4msr.pipeline.knowledge.cli",
    "llm4msr.serving.cli",
    "llm4msr.experiments.cli",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llm4msr", description="LLM-enhanced multi-scenario recommendation on TFX.")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="also show what TensorFlow, TFX, Beam and Hugging Face log (quiet by default)")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).add_parser(subparsers)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if not args.verbose:
        quiet_libraries()
    try:
        code = args.func(args) or 0
    except UserFacingError as error:
        print(f"llm4msr: error: {error}", file=sys.stderr)
        code = 2
    if argv is None and uses_file_system_plugins():  # the command line, not a caller in Python
        # tensorflow-io's S3 client aborts the interpreter's shutdown (exit status 134): everything
        # is written and flushed by now, so the process ends here with the command's own status
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
