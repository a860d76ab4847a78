"""The `devreg` command's entry point.

Loading the CLI's modules takes a third of a second: a Ctrl-C then ends the command as one
later does (status 130), not with the interpreter's traceback of the import it interrupted.
"""

import sys


def main() -> None:
    try:
        from devreg.cli import main as run_command
    except KeyboardInterrupt:
        sys.exit(130)
    run_command()
