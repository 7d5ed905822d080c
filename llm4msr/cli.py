"""The `llm4msr` command line. Each sub-command lives next to the code it drives and
registers itself through an `add_parser(subparsers)` function listed here."""
import argparse
import importlib
import sys

from llm4msr.errors import UserFacingError
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
        return args.func(args) or 0
    except UserFacingError as error:
        print(f"llm4msr: error: {error}", file=sys.stderr)
        return 2
