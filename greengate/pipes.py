"""Command-line output into a pipe whose reader may leave (`greengate-fleet … | head`)."""

import os
import sys
from typing import Callable

# The shell's status for a process that SIGPIPE ended (128 + 13), as `cat` would give:
# the reader left, which is no error of ours, so no traceback either.
PIPE_CLOSED = 141


def run_command(handler: Callable[[], int]) -> int:
    """Run a command's handler; a reader gone from stdout ends it quietly with PIPE_CLOSED."""
    try:
        status = handler()
        sys.stdout.flush()  # a closed pipe shows here rather than at exit, where it can't be caught
    except BrokenPipeError:
        # Keep Python's exit-time flush of stdout from failing again (it would print
        # 'Exception ignored ... BrokenPipeError').
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return PIPE_CLOSED
    return status
