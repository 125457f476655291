"""What happens when a dataset file cannot give a correct sample.

A file that is unreadable, truncated, too short for the requested window, or whose
actions do not match its frames raises `BadVideoError`. The input pipeline either
re-raises it (naming the file) or, with `on_bad_file="skip"`, drops that sample
and emits a `BadVideoWarning` that names the file and counts the files skipped so
far. A sample is never silently altered to fit.
"""

__all__ = ["BadVideoError", "BadVideoWarning"]


class BadVideoError(ValueError):
    """A video file that cannot give a correct sample; the message names the file
    (once the pipeline knows it) and says what is wrong."""


class BadVideoWarning(UserWarning):
    """A bad video file was skipped (`on_bad_file="skip"`)."""
