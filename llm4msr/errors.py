"""Errors shown to users: one line naming what is wrong and where, no traceback."""


class UserFacingError(Exception):
    """An error caused by the user's input or environment, printed by the CLI without a traceback."""


class DataError(UserFacingError):
    """Bad input data, located by file, line and field whenever they are known."""

    def __init__(self, path, message, line=None, field=None):
        self.path, self.line, self.field, self.message = str(path), line, field, message
        where = self.path
        if line is not None:
            where += f", line {line}"
        if field is not None:
            where += f", field '{field}'"
        super().__init__(f"{where}: {message}")
