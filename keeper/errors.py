"""Errors a user can act on: printed as one line, never as a traceback."""


class KeeperError(Exception):
    """A problem with input, config or environment, stated in one line that says what to do."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message
