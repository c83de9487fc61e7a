"""The one error type of cnnlab: what the CLI reports as one line with exit code 2."""


class CnnlabError(Exception):
    """A bad file, a bad argument or a bad state: reported as one line, exit code 2."""
