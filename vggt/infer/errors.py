"""The one kind of failure the command line reports without a traceback."""


class InputError(Exception):
    """Bad input (images, checkpoint, query points, ranks): one line on stderr, exit status 2,
    before any model work."""
