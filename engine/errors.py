"""The base of every error a user can see, and the exit codes `policyctl` turns them into.

Every error class in `engine` derives from `PolicyctlError` (besides its other bases, such
as `ValueError`), so the command line catches it once and exits with the class's
`exit_code`. A class states what differs from the default in its `class` line:

    class StoreBusyError(PolicyctlError, RuntimeError, exit_code=EXIT_BUSY): ...
    class PolicyError(PolicyctlError, located=True): ...

`located=True` says that the error's text already starts with where the problem is
(`policy.policy:3:7: error: …`, `models.yaml: …`), so it is printed as it is; any other
error is printed as `policyctl: error: TEXT`. Foundation: the standard library only.
"""

from __future__ import annotations

from typing import Any, ClassVar

EXIT_OK = 0
EXIT_ERROR = 1  # not the input's fault: a bug, or a state store that cannot be reached
EXIT_BAD_INPUT = 2
EXIT_DENIED = 3
EXIT_BUSY = 4  # the state store is locked by another process (waited, timed out)


class PolicyctlError(Exception):
    """An error a user can see: bad input (exit 2) unless its class says otherwise."""

    exit_code: ClassVar[int] = EXIT_BAD_INPUT
    located: ClassVar[bool] = False  # its text starts with its own location: printed as is

    def __init_subclass__(
        cls, *, exit_code: int | None = None, located: bool | None = None, **kwargs: Any
    ) -> None:
        super().__init_subclass__(**kwargs)
        if exit_code is not None:
            cls.exit_code = exit_code
        if located is not None:
            cls.located = located

    def cli_text(self) -> str:
        """What `policyctl` prints on standard error for this error."""
        return str(self) if self.located else f"policyctl: error: {self}"
