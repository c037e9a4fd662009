"""``python -m training.dataset {build,import-masks,merge} ...``: the dataset commands."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from satseg_plugin.inference.cli import join_negative_values, run_cli
from satseg_plugin.inference.runfolder import output_folder

#: subcommand -> (module under training.dataset, one-line help). Modules load only when chosen.
COMMANDS = {
    "build": ("build", "OpenStreetMap labels (+ XYZ imagery) into training tiles"),
    "import-masks": ("import_masks", "image + RGB mask pairs into training tiles"),
    "merge": ("merge", "combine datasets, matching classes by name"),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``; hand the chosen command's arguments to its module's ``run``."""
    argv = join_negative_values(list(sys.argv[1:] if argv is None else argv))
    parser = argparse.ArgumentParser(
        prog="python -m training.dataset",
        description="Build, import and merge satseg training datasets (layout: docs/design.md).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = argv[0] if argv and argv[0] in COMMANDS else None
    modules = {}
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:  # import only what runs: import-masks and merge stay independent of build
            modules[name] = importlib.import_module(f"training.dataset.{module}")
            modules[name].add_arguments(p)
    args = parser.parse_args(argv)
    # One command at a time per dataset folder; what killed runs left in it (``.part`` files) goes,
    # and a full or read-only disk is one line.
    with output_folder(args.out, "dataset folder", recursive=True):
        return int(modules[args.command].run(args) or 0)


if __name__ == "__main__":
    sys.exit(run_cli(main))
