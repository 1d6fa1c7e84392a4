"""Exceptions raised by ikd_core with messages meant for end users."""


class IKDError(Exception):
    """A user-facing error: the message says what is wrong and how to fix it."""


class DataError(IKDError):
    """Missing, empty or malformed dataset."""


class CheckpointError(IKDError):
    """A checkpoint that cannot be loaded safely or does not match its metadata."""


class WeightsError(IKDError):
    """Teacher weights that cannot be found or do not fit the backbone."""
