"""Opening user paths safely: only regular files are read, within a size limit.

A FIFO blocks ``open()`` until a writer comes (forever, for a typo'd path), ``/dev/urandom`` never
ends, and a folder cannot be read: each is refused from ``os.stat`` (which never blocks) before
anything is opened, with a one-line error naming the path and what it is. Every open of a path a
user gives (audio, images, manifests, configs, a checkpoint's files) goes through here.
"""

from __future__ import annotations

import os
import stat

from ..errors import InputError


def _kind(mode: int) -> str:
    """What a non-regular file is, in words."""
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _fail(error, path, reason: str):
    """``error("PATH: reason")``, with ``reason`` kept as an attribute (for errors of another shape)."""
    problem = error(f"{_show(os.fspath(path))}: {reason}")
    problem.reason = reason
    return problem


def check_regular(path, what: str = "file", error=InputError) -> int:
    """Size in bytes of ``path`` if it is a regular file (links followed), else ``error`` naming it:
    missing, a folder, a FIFO, a device or a socket. ``what`` names the file's role in the message
    ("audio file", "manifest"); ``error`` is the exception class to raise (one taking a message)."""
    path = os.fspath(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise _fail(error, path, f"{what} not found") from None
    except OSError as problem:  # permission denied on a folder above, a name too long, a loop of links
        raise _fail(error, path, f"cannot open {what} ({problem.strerror or type(problem).__name__})") from None
    if not stat.S_ISREG(info.st_mode):
        kind = _kind(info.st_mode)
        raise _fail(error, path, f"is {kind}, not a {'file' if kind == 'a folder' else 'regular file'} ({what} expected)")
    return info.st_size


def open_regular(path, what: str = "file", error=InputError):
    """``path`` opened for binary reading, once :func:`check_regular` passed. Opened with
    ``O_NONBLOCK`` and checked again through the descriptor, so a file swapped for a FIFO between
    the check and the open cannot block either."""
    check_regular(path, what, error)
    try:
        fd = os.open(os.fspath(path), os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as problem:
        raise _fail(error, path, f"cannot open {what} ({problem.strerror or type(problem).__name__})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise _fail(error, path, f"is not a regular {what}")
    if hasattr(os, "set_blocking"):
        os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def read_regular_file(path, limit: int, what: str = "file", error=InputError) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes, else ``error`` naming it (see
    :func:`check_regular`). Reads at most ``limit + 1`` bytes whatever the file's size claims."""
    size = check_regular(path, what, error)
    if size > limit:
        raise _fail(error, path, f"{what} of {size} bytes is larger than the limit of {limit} bytes")
    with open_regular(path, what, error) as file:
        data = file.read(limit + 1)
    if len(data) > limit:  # grew since the stat
        raise _fail(error, path, f"{what} is larger than the limit of {limit} bytes")
    return data


def check_output_folder(folder, what: str = "output folder", error=InputError) -> None:
    """Raise ``error`` unless ``folder`` is (or can be created as) a writable folder. Called before
    long work (decoding a test set, training) so that its results are not lost at the last step."""
    folder = os.path.abspath(os.fspath(folder))
    probe = folder
    while not os.path.exists(probe):  # the nearest existing folder above decides whether it can be made
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        where = "" if probe == folder else f" ({_show(probe)} is a file)"
        raise error(f"{_show(folder)}: {what} is not a folder{where}")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise error(f"{_show(folder)}: {what} is not writable" if probe == folder else
                    f"{_show(folder)}: {what} cannot be created ({_show(probe)} is not writable)")


def _show(path: str) -> str:
    """A path as one printable line: control characters (a newline in a file name) and bytes that
    are not UTF-8 (kept by Python as lone surrogates) are escaped, as ``\\n`` and ``\\xff``."""
    return escape(path)


def escape(text: str) -> str:
    """``text`` with control characters, backslashes and undecodable bytes escaped, so that it is
    one line of valid UTF-8 (used for file names in ``PATH<TAB>TEXT`` output and in errors)."""
    if text.isprintable() and "\\" not in text:
        try:
            text.encode("utf-8")
            return text
        except UnicodeEncodeError:
            pass
    out = []
    for char in text:
        code = ord(char)
        if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (os.fsdecode's surrogateescape)
            out.append(f"\\x{code - 0xDC00:02x}")
        elif char == "\\":
            out.append("\\\\")
        elif not char.isprintable() or 0xD800 <= code <= 0xDFFF:
            out.append(char.encode("unicode_escape").decode("ascii") if code < 0xD800 or code > 0xDFFF
                       else f"\\u{code:04x}")
        else:
            out.append(char)
    return "".join(out)
