"""User-facing errors: one clear line on stderr and a non-zero exit, never a traceback."""
import functools
import sys


class UserError(Exception):
    """A mistake in the user's input (paths, files, config, flags) rather than a bug."""


def exit_on_user_error(main):
    """Decorate an entry point so that a UserError prints ``error: <message>`` and exits with 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr)
            sys.exit(130)

    return wrapper
