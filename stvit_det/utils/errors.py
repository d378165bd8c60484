"""One-line error messages of the tools."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type name when the message is empty: what a tool's
    one-line ``error:`` quotes of an error raised by a library (a config merge, a model build, a forward)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


__all__ = ['first_line']
