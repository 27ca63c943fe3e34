"""`cropclf <command> [flags]` (or `python -m cropclf ...`): the same commands as scripts/*.py."""

from __future__ import annotations

import importlib
import sys

from cropclf.commands import COMMANDS


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in COMMANDS:
        known = "|".join(COMMANDS)
        stream = sys.stdout if argv[:1] in (["-h"], ["--help"]) else sys.stderr
        print(f"usage: cropclf {{{known}}} [flags]  (cropclf <command> --help lists a command's flags)", file=stream)
        if argv[:1] not in (["-h"], ["--help"]):
            print(f"error: unknown command. Received: {' '.join(argv[:1]) or '(none)'}", file=sys.stderr)
            raise SystemExit(2)
        return
    from cropclf.cli import run

    command = importlib.import_module(f"cropclf.commands.{COMMANDS[argv[0]]}")
    sys.argv = [f"cropclf {argv[0]}", *argv[1:]]  # argparse names the program after argv[0]
    run(command.main)


if __name__ == "__main__":
    main()
