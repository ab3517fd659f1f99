"""Errors the user can act on: the CLI and the add-on show their message as one line."""


class BackendError(Exception):
    """Base class: the message says what is wrong and what to do."""


class InputError(BackendError):
    """Bad input files (views, images, meshes)."""


class CheckpointError(BackendError):
    """A checkpoint or model folder that cannot be loaded safely or does not fit the network."""


class CancelledError(BackendError):
    """The caller asked to stop; nothing was written."""
