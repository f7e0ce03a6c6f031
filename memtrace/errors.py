"""Typed errors. Library code raises these; only the CLI turns them into one-line messages.

Exit codes (documented in README): 0 ok, 1 finding over threshold, 2 usage or input error,
3 environment error (missing tool, kernel, permissions), 4 the lab guest failed (panic, hang,
scenario error), 5 incomplete result (a live walk met faults: the kernel changed under it),
70 memtrace's own bug (an unexpected exception: traceback printed), 130 interrupted.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FINDING = 1
EXIT_USAGE = 2
EXIT_ENVIRONMENT = 3
EXIT_GUEST = 4
EXIT_INCOMPLETE = 5
EXIT_BUG = 70  # sysexits EX_SOFTWARE: an internal error, never a user's mistake
EXIT_INTERRUPTED = 130


class MemtraceError(Exception):
    """An error with a one-line message meant for the user."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str, *, detail: str | None = None):
        super().__init__(message)
        self.message = message
        #: extra lines (e.g. a serial log tail) printed after the one-line error
        self.detail = detail

    def __str__(self) -> str:
        # the CLI prints message and detail itself; elsewhere (a test's report) show both
        return self.message if not self.detail else f"{self.message}\n{self.detail}"


class InputError(MemtraceError):
    """Bad input: unknown name, unreadable or malformed file."""

    exit_code = EXIT_USAGE


class EnvironmentProblem(MemtraceError):
    """Something the machine lacks: a tool, a package, a permission."""

    exit_code = EXIT_ENVIRONMENT


class GuestError(MemtraceError):
    """A lab guest panicked, hung, or its scenario failed."""

    exit_code = EXIT_GUEST
