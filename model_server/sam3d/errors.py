"""Errors shared by the command modules."""


class CLIError(Exception):
    """A user error at the command line: printed as one clear line, exit status 2."""
