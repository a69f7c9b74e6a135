"""Files that appear whole or not at all: written to a temporary file in the same folder, then renamed over the
target (`os.replace` is atomic on POSIX and Windows within one file system). A run killed mid-write leaves the old
file (or none) and a stray `.tmp-*` file, never a truncated `all_results.json` or model card that a reader, or
`mm_hf.publish`, would take for a finished one."""

import contextlib
import os
import tempfile


@contextlib.contextmanager
def atomic_path(path):
    """A temporary path next to `path` (same extension, so writers that infer the format from it work) that
    replaces `path` when the block ends without an exception; on an exception the temporary file is removed."""
    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    stem, ext = os.path.splitext(name)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{stem}-", suffix=ext, dir=folder)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def atomic_write(path, mode: str = "w", encoding: str | None = "utf-8", newline: str | None = None):
    """`open(path, mode)` whose content replaces `path` only once the block has completed (flushed and fsynced)."""
    binary = "b" in mode
    with atomic_path(path) as tmp:
        with open(tmp, mode, encoding=None if binary else encoding, newline=newline) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())


def write_text_atomic(path, text: str) -> None:
    """`Path.write_text`, atomically."""
    with atomic_write(path) as f:
        f.write(text)
