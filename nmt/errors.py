"""The one exception type that reaches users as a one-line message instead of a traceback."""


class NMTError(Exception):
    """A problem the user can fix: bad input, bad config, missing file. The message must name the file (and
    line) when there is one, say what is wrong and what to do. The CLI prints it on one line and exits non-zero;
    `--debug` shows the traceback as well."""


class Diverged(NMTError):
    """Training stopped because its loss or gradient norm stayed non-finite: a result for a study of
    training settings, where any other error is a mistake to report."""
