"""The one kind of failure the command line reports without a traceback."""


class InputError(Exception):
    """Bad input (images, checkpoint, query points, ranks): one line on stderr, exit status 2,
    before any model work. `agreed`: every rank raised it together (once the ranks are up), so
    rank 0 alone reports it; before that each rank reports its own, naming its rank."""

    def __init__(self, message: str, agreed: bool = False) -> None:
        super().__init__(message)
        self.agreed = agreed
