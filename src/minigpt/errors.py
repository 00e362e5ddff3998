"""Errors that are the user's to fix (bad data, bad paths, bad config).

The CLI prints these as one clear line instead of a traceback; everything else is a bug and
keeps its traceback.
"""


class UserError(ValueError):
    """A problem with user input: the message names the file and line, or the field, at fault."""
