"""What the project's command lines share: a user's mistake is one ``error:`` line and exit status 2.

What it does: `UserError` is a mistake in what the user asked for (a config key, a missing file, a
policy that cannot be loaded); its message names the problem and the fix. `user_errors()` turns the
errors that reading a command line raises (unknown or mistyped config keys, missing files) into
`UserError`. `run(main, argv)` calls an entry point and prints a `UserError` as ``error: ...`` on
stderr with exit status 2, and ends quietly when stdout is closed early (``--dry-run | head``).

What it does not: no argument parsing (argparse does that); errors raised while training or evaluating
keep their traceback, since they are not the user's input.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class UserError(Exception):
    """A mistake in what the user asked for; the message names the problem and the fix."""


@contextmanager
def user_errors() -> Iterator[None]:
    """Re-raise config and input errors (KeyError, ValueError, TypeError, FileNotFoundError) as `UserError`."""
    try:
        yield
    except UserError:
        raise
    except (KeyError, ValueError, TypeError, FileNotFoundError) as err:
        # KeyError's str() adds quotes around its message: use the message itself
        raise UserError(str(err.args[0]) if err.args else repr(err)) from err


def run(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Call ``main(argv)``; a `UserError` becomes one ``error:`` line and exit status 2."""
    try:
        code = main(argv) or 0
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
        return code
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader of stdout went away (| head): stop without a traceback
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
