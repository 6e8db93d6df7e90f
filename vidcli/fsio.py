"""Atomic file writes: everything lands under a temporary name and is renamed into place.

A crash, Ctrl-C or full disk therefore never leaves a half-written file under its final name.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vidcli.errors import VidcliError, fail

PARTIAL_MARK = ".partial-"


def _default_mode() -> int:
    """0o666 less the umask: what open() would have given (mkstemp makes files private, 0o600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` if the block succeeds.

    `suffix` keeps an extension that a writer insists on (Keras wants `.keras`, NumPy `.npz`).
    On any exception the temporary file is removed and the final name is untouched.
    """
    final = Path(path)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}{PARTIAL_MARK}", suffix=suffix, dir=final.parent)
        os.close(fd)
    except OSError as exc:
        raise _os_error(final, exc) from exc
    tmp = Path(tmp_name)
    try:
        yield tmp
        if tmp.is_file():
            os.chmod(tmp, _default_mode())
        os.replace(tmp, final)
    except OSError as exc:
        _remove_quietly(tmp)
        raise _os_error(final, exc) from exc
    except BaseException:
        _remove_quietly(tmp)
        raise


def _remove_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        if path.is_dir():
            import shutil

            shutil.rmtree(path)
        else:
            path.unlink()


def _os_error(path: Path, exc: OSError) -> VidcliError:
    reason = exc.strerror or str(exc)
    return fail(f"cannot write {path}: {reason}")


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    p = Path(path)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise VidcliError(f"{p}: file not found") from exc
    except (OSError, ValueError) as exc:
        raise VidcliError(f"{p}: not readable JSON ({exc})") from exc
