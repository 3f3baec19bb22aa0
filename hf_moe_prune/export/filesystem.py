"""The two filesystem primitives an atomic publish needs: flushing to disk and swapping two folders in one step."""

from __future__ import annotations

import ctypes
import errno
import os
import sys
from pathlib import Path


def fsync(path: Path) -> None:
    """Flush a file or folder to disk (POSIX; a no-op elsewhere)."""
    if os.name != "posix":  # only POSIX can fsync a folder or a read-only descriptor
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def exchange(first: Path, second: Path) -> bool:
    """Swap two paths in one step (Linux `renameat2(RENAME_EXCHANGE)`); False where the OS or filesystem cannot."""
    if not sys.platform.startswith("linux"):
        return False
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)  # glibc >= 2.28
    if renameat2 is None:
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # filesystem without exchange
        return False
    raise OSError(code, os.strerror(code), str(second))
