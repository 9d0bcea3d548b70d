"""The ``gfsprune`` console script: the command line imported under a watch for Ctrl-C.

Importing the command line imports torch, which takes seconds; a Ctrl-C in that window
would otherwise end in a bare traceback. ``import gfsprune`` itself imports nothing heavy
(its public names load on first use), so this module is the first thing the script runs.
"""

from __future__ import annotations

import sys


def main() -> int:
    """Import the command line and run it; 130 (as for SIGINT) if interrupted while starting."""
    try:
        from gfsprune.workflow.cli import main as run
    except KeyboardInterrupt:
        print("gfsprune: interrupted while starting.", file=sys.stderr)
        return 130
    return run()
