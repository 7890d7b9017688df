"""Command line: ``python -m llm_course <command> ...`` (also installed as ``llm-course``).

Each command lives in the module that implements it; that module defines
``add_command(subparsers)``, which adds its sub-parser and sets ``func`` to the
function that runs it. Commands are imported only when they are listed, so the
command line starts fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# (command name, module that defines add_command)
COMMANDS = [
    ("tokenize", "llm_course.tokenizer_cli"),
    ("train", "llm_course.train_cli"),
    ("generate", "llm_course.generation"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m llm_course", description="llm-course command line")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name != module_name:
                raise
            continue  # a chapter not written yet
        module.add_command(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ValueError, TypeError) as err:  # bad input: one clear line, no traceback
        parser.exit(2, f"error: {err}\n")


if __name__ == "__main__":
    sys.exit(main())
