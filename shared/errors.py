"""Errors the CLI turns into one clear line and exit code 2."""


class CassavaError(Exception):
    """A user-facing error: bad arguments, missing model, unreadable data. Printed as one line."""


class BadImage(CassavaError):
    """An image that cannot be decoded or is unsafe to decode (corrupt, not an image, too many pixels)."""
