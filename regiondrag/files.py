"""Reading an input file: a regular file only, and never more than a cap, whatever stat() says.

A size from stat() bounds nothing: /dev/zero reports 0 bytes and never ends, a FIFO reports 0
and blocks until something writes to it, a file may grow while it is read. So an input is
opened without blocking, refused unless the open file is a regular file (checked on the open
descriptor: no race with a path swapped in between), and read for at most cap + 1 bytes.
"""
from __future__ import annotations

import os
import stat
from typing import Union

PathLike = Union[str, os.PathLike]

# What a path that is not a regular file is, in words (stat's file types).
NOT_REGULAR = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
               (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def read_bounded(path: PathLike, cap: int, what: str, error: type[Exception], holds: str,
                 too_big: type[Exception] | None = None) -> bytes:
    """The bytes of the regular file at `path`, at most `cap`; anything else is one `error`
    naming `what` and the path: not found, not a regular file (saying what it is), unreadable,
    or longer than cap (a `too_big`, default `error`; `holds` says what a file of this kind
    holds, e.g. "a region file holds")."""
    if "\0" in os.fspath(path):
        raise error(f"{what} path {os.fspath(path)!r} has a NUL byte")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # O_NONBLOCK: opening a FIFO must not hang
    except FileNotFoundError:
        raise error(f"{what} not found: {path}") from None
    except OSError as e:
        raise error(f"cannot read {what} {path}: {e.strerror or e}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = next((name for test, name in NOT_REGULAR if test(mode)), "not a regular file")
            raise error(f"{what} {path} is {kind}, not a regular file; give the path of a file")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(cap + 1)
    except OSError as e:
        raise error(f"cannot read {what} {path}: {e.strerror or e}") from None
    finally:
        os.close(fd)
    if len(data) > cap:
        raise (too_big or error)(f"{what} {path} has more than {cap} bytes, more than {holds}; is it the right file?")
    return data
