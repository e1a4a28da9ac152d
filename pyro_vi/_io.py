"""Safe files: atomic writes, and loads that never run code.

:func:`atomic_write` writes a temporary file in the target's folder, flushes and fsyncs it,
moves it over the target with :func:`os.replace` (atomic on POSIX and Windows) and fsyncs the
folder, so a reader sees the old file or the new one, never half of one; a failed write leaves
the old file untouched and no temporary behind. :func:`save_tensors` / :func:`load_tensors` put
nested dicts, lists and tuples of tensors and plain Python values through it and through
``torch.load(weights_only=True)``, which refuses any pickled object.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

__all__ = ["atomic_write", "check_writable", "from_plain", "import_class", "load_tensors",
           "save_figure", "save_tensors", "to_plain", "write_bytes", "write_csv", "write_text"]


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], object]) -> Path:
    """Call ``write(f)`` on a temporary file beside ``path``, then move it onto ``path``.

    Temporary file in the same folder, ``fsync``, :func:`os.replace`, ``fsync`` of the folder.
    If ``write`` raises, the temporary is removed, ``path`` keeps its old content and the
    exception propagates. The new file keeps the mode of the file it replaces (a new one gets
    ``0666`` less the umask, as :func:`open` would). A target that is a folder, or a file
    without write permission, is refused before ``write`` runs (:func:`check_writable`).
    Returns ``path`` as a :class:`~pathlib.Path`.
    """
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    mode = check_writable(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # mkstemp makes 0600: keep the old file's mode, or the umask's
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(folder)
    return target


def check_writable(path: str | os.PathLike[str], *, what: str = "file") -> int:
    """Check that :func:`atomic_write` can write ``path``; return the mode the file will get.

    Refused with a ``ValueError`` naming ``path`` (``what`` says what it is for): a folder, a
    missing parent folder, a read-only file (no write bit: replacing it would defeat that),
    and a folder where no file can be created (a probe file is made and removed, so this also
    holds for root and for read-only file systems).
    """
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if target.is_dir():
        raise ValueError(f"{what} {str(target)!r} is a directory, not a file path")
    if not folder.is_dir():
        raise ValueError(f"{what} {str(target)!r}: directory {str(folder)!r} does not exist")
    if target.exists():
        mode = stat.S_IMODE(target.stat().st_mode)
        if not mode & 0o222:
            raise ValueError(f"{what} {str(target)!r} is read-only (mode {mode:o}); "
                             f"make it writable or choose another path")
    else:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".probe", dir=folder)
    except OSError as err:
        raise ValueError(f"{what} {str(target)!r}: cannot write in {str(folder)!r} "
                         f"({err.strerror or err})") from None
    os.close(fd)
    os.unlink(probe)
    return mode


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (:func:`atomic_write`)."""
    return atomic_write(path, lambda f: f.write(data))


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (:func:`atomic_write`)."""
    return write_bytes(path, text.encode("utf-8"))


def write_csv(frame: Any, path: str | os.PathLike[str], **kwargs: Any) -> Path:
    """``frame.to_csv(**kwargs)`` written to ``path`` atomically (:func:`atomic_write`)."""
    return write_text(path, frame.to_csv(**kwargs))


def save_figure(fig: Any, path: str | os.PathLike[str], **kwargs: Any) -> Path:
    """``fig.savefig`` into memory, then the bytes to ``path`` atomically.

    The format comes from the suffix of ``path``, as :meth:`matplotlib.figure.Figure.savefig`
    would infer it.
    """
    buffer = io.BytesIO()
    fmt = kwargs.pop("format", None) or Path(path).suffix.lstrip(".") or "png"
    fig.savefig(buffer, format=fmt, **kwargs)
    return write_bytes(path, buffer.getvalue())


def save_tensors(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` (tensors and plain data only) atomically with :func:`torch.save`."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def load_tensors(path: str | os.PathLike[str], *, what: str = "file") -> Any:
    """``torch.load(path, weights_only=True)``, with errors that name the file.

    A file holding pickled objects other than tensors and plain data is refused (nothing in it
    runs); a truncated or foreign file is a ``ValueError`` naming ``path`` and ``what`` it was
    meant to be; a missing one is :class:`FileNotFoundError`.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} not found: {p}")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(f"{p}: refused to load: it is not a {what} of tensors and plain data "
                         f"(weights_only load failed: {_first_line(err)})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise ValueError(f"{p}: not a readable {what} (truncated or not written by pyro-vi: "
                         f"{_first_line(err)})") from None


def _first_line(err: BaseException) -> str:
    lines = str(err).splitlines()
    return lines[0] if lines else type(err).__name__


#: Packages whose classes a file may name (as "module:QualName"); nothing else is imported.
_TRUSTED = ("pyro_vi.",)
_PLAIN = (type(None), bool, int, float, str)


def to_plain(obj: Any) -> Any:
    """``obj`` as nested dicts/lists of tensors and plain values, for :func:`save_tensors`.

    Dataclasses and objects of ``pyro_vi`` classes become ``{"__class__": "module:Name",
    "__state__": {...}}`` of their attributes (the model's resolved hyper-parameters, a params
    record, its factors); ``torch.dtype``/``torch.device`` become tagged strings. Anything else
    (a function, an object of another package) is a ``TypeError``: nothing is pickled.
    """
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().clone()
    if isinstance(obj, _PLAIN):
        return obj
    if isinstance(obj, torch.dtype):
        return {"__dtype__": str(obj).removeprefix("torch.")}
    if isinstance(obj, torch.device):
        return {"__device__": str(obj)}
    if isinstance(obj, tuple):
        return {"__tuple__": [to_plain(v) for v in obj]}
    if isinstance(obj, list):
        return [to_plain(v) for v in obj]
    if isinstance(obj, dict):
        if not all(isinstance(k, str) for k in obj):
            raise TypeError("only dicts with str keys can be saved")
        return {"__dict__": {k: to_plain(v) for k, v in obj.items()}}
    cls = type(obj)
    name = f"{cls.__module__}:{cls.__qualname__}"
    if not cls.__module__.startswith(_TRUSTED) or not hasattr(obj, "__dict__"):
        raise TypeError(f"cannot save a {name}: only tensors, plain data and pyro_vi records")
    return {"__class__": name, "__state__": {k: to_plain(v) for k, v in vars(obj).items()}}


def from_plain(data: Any, *, where: str) -> Any:
    """Invert :func:`to_plain`; classes outside ``pyro_vi`` are refused (``where`` names the file)."""
    if isinstance(data, list):
        return [from_plain(v, where=where) for v in data]
    if not isinstance(data, dict):
        return data
    if "__dtype__" in data:
        return getattr(torch, data["__dtype__"])
    if "__device__" in data:
        return torch.device(data["__device__"])
    if "__tuple__" in data:
        return tuple(from_plain(v, where=where) for v in data["__tuple__"])
    if "__dict__" in data:
        return {k: from_plain(v, where=where) for k, v in data["__dict__"].items()}
    cls = import_class(data["__class__"], where=where)
    obj: Any = object.__new__(cls)
    # frozen dataclasses refuse setattr; their __dict__ is the state all the same
    obj.__dict__.update({k: from_plain(v, where=where) for k, v in data["__state__"].items()})
    return obj


def import_class(name: str, *, where: str) -> type:
    """The class ``"module:QualName"`` of a ``pyro_vi`` module (ValueError naming ``where``)."""
    import importlib

    module, _, qual = str(name).partition(":")
    if not module.startswith(_TRUSTED) or not qual:
        raise ValueError(f"{where}: refers to class {name!r} outside pyro_vi; refused")
    try:
        obj: Any = importlib.import_module(module)
        for part in qual.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"{where}: class {name!r} does not exist in this pyro-vi ({err})") from None
    if not isinstance(obj, type):
        raise ValueError(f"{where}: {name!r} is not a class")
    return obj
