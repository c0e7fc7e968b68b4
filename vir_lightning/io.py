"""Small file utilities shared by the commands that write results: nothing half-written is left."""

from __future__ import annotations

import argparse
import contextlib
import csv
import errno
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence


def _nearest_existing(folder: str) -> str:
    """``folder`` or its closest ancestor that exists (the one a makedirs would create below)."""
    while not os.path.exists(folder):
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
    return folder


#: Written into every folder :func:`atomic_output` makes: only a folder holding it (or an empty one) is
#: replaced whole, so ``export-cluttered ~/data`` cannot delete files that this library did not write.
OUTPUT_MARKER = ".written-by-vir_lightning"


#: In each folder where this library wrote files: name → fingerprint (inode, size, mtime) and the run
#: that made it, so a later write replaces a file only if this library wrote it and it is unchanged.
OUTPUTS_RECORD = ".vir_lightning-outputs.json"


def _fingerprint(path: str) -> list[int]:
    status = os.stat(path)
    return [status.st_ino, status.st_size, status.st_mtime_ns]


def _record_path(path: str) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(path)), OUTPUTS_RECORD)


def _read_record(text: str) -> dict:
    try:
        record = json.loads(text) if text.strip() else {}
    except ValueError:  # damaged (e.g. an editor): forgetting what we wrote only makes writes refuse
        return {}
    return record if isinstance(record, dict) else {}


def _unchanged(path: str, entry: dict) -> bool:
    try:
        return entry.get("fingerprint") == _fingerprint(path)
    except OSError:
        return False


def _recorded(path: str) -> dict | None:
    """``path``'s entry in its folder's record if this library wrote it and it has not changed since."""
    path = os.path.realpath(path)  # a link: what it points to is what was written (atomic_output)
    try:
        with open(_record_path(path)) as f:
            entry = _read_record(f.read()).get(os.path.basename(path))
    except OSError:
        return None
    return entry if isinstance(entry, dict) and _unchanged(path, entry) else None


def _remember(path: str, run: str | None) -> None:
    """Enter the file just written at ``path`` in its folder's record (under a lock: grids write
    from several processes); entries of files that are gone or changed are dropped."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        with open(_record_path(path), "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            f.seek(0)
            record = {
                name: entry
                for name, entry in _read_record(f.read()).items()
                if isinstance(entry, dict) and _unchanged(os.path.join(folder, name), entry)
            }
            record[os.path.basename(path)] = {"fingerprint": _fingerprint(path), "run": run}
            f.seek(0)
            f.truncate()
            f.write(json.dumps(record, indent=1, sort_keys=True) + "\n")
    except OSError:  # unrecorded, the file is only protected better: a later write asks for --overwrite
        pass


def add_overwrite_argument(parser: argparse.ArgumentParser, what: str) -> None:
    """``--overwrite`` (or ``--overwrite true``, as the training commands spell it): replace ``what``
    even where :func:`check_output_path` would keep it."""
    parser.add_argument(
        "--overwrite",
        nargs="?",
        const=True,
        default=False,
        type=_true_or_false,
        help=f"replace {what} even if it exists and was not written by this command for this run",
    )


def _true_or_false(text: str) -> bool:
    value = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}.get(text.lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")
    return value


def _same_file(a: str, b: str) -> bool:
    """Whether two paths name one file (through links, ``..`` and hard links too)."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return os.path.realpath(a) == os.path.realpath(b)


def _inside(path: str, folder: str) -> bool:
    """Whether ``path`` lies inside ``folder`` (through links too)."""
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path != folder and os.path.commonpath([path, folder]) == folder


def check_output_path(
    path: str,
    what: str = "output",
    directory: bool = False,
    replaces: bool = False,
    inputs: Sequence[str] = (),
    overwrite: bool = False,
    run: str | None = None,
) -> None:
    """Raise a one-line ValueError, naming the fix, when :func:`atomic_output` could not or should not
    write ``path``.

    The one output rule of every command that writes (each calls this before its work, so a bad
    output path fails at once instead of after it):

    - an output never replaces one of the command's own ``inputs`` (not even with ``overwrite``);
    - an existing file is replaced only if this library wrote it and it has not changed since (its
      folder's :data:`OUTPUTS_RECORD` says so), or with ``overwrite`` (the user's ``--overwrite``);
    - with ``run`` (what makes this command's result what it is: its checkpoint, its options), a
      file that holds the result of another run is replaced only with ``overwrite``, so results of
      different runs never share a file silently;
    - a read-only file is kept (the user protected it), even with ``overwrite``;
    - with ``replaces`` (a folder that will be replaced whole), a folder that holds files and no
      :data:`OUTPUT_MARKER` is kept, even with ``overwrite``: this library never deletes a folder
      it did not write;
    - and the path must be writable: not an existing folder (file wanted) or file (folder wanted),
      not below a file, not without write permission.
    """
    path = os.fspath(path)  # a pathlib.Path as well as a str
    if not path:
        raise ValueError(f"{what}: the output path is empty; give a file name")
    if not directory and path.endswith(("/", os.sep)) and not os.path.isdir(path):
        raise ValueError(f"{what} {path!r} ends with '/', so it names a folder; give a file name")
    if not directory and os.path.isdir(path):
        raise ValueError(f"{what} {path!r} is a directory; give a file name (e.g. {os.path.join(path, 'out')}…)")
    for source in inputs:
        if source and _same_file(path, os.fspath(source)):
            raise ValueError(
                f"{what} {path!r} is this command's own input {os.fspath(source)!r}: writing it would"
                " replace that input; choose another output path"
            )
    if directory and os.path.lexists(path) and not os.path.isdir(path):
        raise ValueError(f"{what} {path!r} is an existing file; give a folder name")
    if replaces and os.path.isdir(path):
        for source in inputs:
            if source and _inside(os.fspath(source), path):
                raise ValueError(
                    f"{what} {path!r} holds this command's own input {os.fspath(source)!r}: the output"
                    " replaces that folder whole; choose another output folder"
                )
    if replaces and os.path.isdir(path) and not os.path.exists(os.path.join(path, OUTPUT_MARKER)):
        try:
            foreign = bool(os.listdir(path))
        except OSError as err:
            message = f"{what} {path!r}: cannot read the folder ({err.strerror}); choose another location"
            raise ValueError(message) from None
        if foreign:
            raise ValueError(
                f"{what} {path!r} is a folder with other files in it, not one this command wrote (or one"
                " written before vir_lightning marked its folders), so it is kept: the output replaces"
                " its folder whole; choose a new folder name, or delete that folder yourself"
            )
    if os.path.isfile(path) and not os.stat(path).st_mode & 0o222:
        raise ValueError(
            f"{what} {path!r} exists and is read-only, so it is kept; make it writable"
            " (chmod u+w) to replace it, or choose another path"
        )
    if not directory and os.path.lexists(path) and not overwrite:
        entry = _recorded(path)
        if entry is None:
            raise ValueError(
                f"{what} {path!r} exists and was not written by vir_lightning (or was changed since),"
                " so it is kept; choose another path, or replace it with --overwrite"
            )
        if run is not None and entry.get("run") not in (None, run):
            raise ValueError(
                f"{what} {path!r} holds the result of another run ({entry['run']}), not of this one"
                f" ({run}); choose another path, or replace it with --overwrite"
            )
    parent = os.path.dirname(os.path.abspath(path))
    existing = _nearest_existing(parent)
    if not os.path.isdir(existing):
        raise ValueError(
            f"{what} {path!r}: {existing!r} is a file, so the folder {parent!r} cannot be created; choose another path"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {path!r}: no permission to write in {existing!r}; choose a writable location")


@contextlib.contextmanager
def atomic_output(path: str, directory: bool = False, overwrite: bool = False, run: str | None = None) -> Iterator[str]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``, else delete it.

    A reader never sees a half-written file (or folder, with ``directory=True``), and an
    interrupted write leaves nothing behind and the earlier ``path`` intact. An existing ``path``
    is replaced only as :func:`check_output_path` allows (``overwrite`` and ``run`` as there); a
    written file is entered in its folder's :data:`OUTPUTS_RECORD` (with ``run``), a folder gets
    :data:`OUTPUT_MARKER`, and the result the user's umask. A path that cannot be written, or a
    full or read-only disk, is a ValueError.
    """
    path = os.fspath(path)
    if os.path.islink(path):  # write what the link points to, rather than replace the link by a file
        path = os.path.realpath(path)
    check_output_path(path, directory=directory, replaces=directory, overwrite=overwrite, run=run)
    parent = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    try:
        os.makedirs(parent, exist_ok=True)
        if directory:
            tmp = tempfile.mkdtemp(dir=parent, prefix=f".partial-{base}-")
        else:
            fd, tmp = tempfile.mkstemp(dir=parent, prefix=".partial-", suffix=os.path.splitext(base)[1])
            os.close(fd)
    except OSError as err:
        raise ValueError(f"cannot write {path!r} ({err.strerror}); choose a writable location") from None
    try:
        yield tmp
        if directory and os.path.isdir(tmp):
            with open(os.path.join(tmp, OUTPUT_MARKER), "w") as marker:
                marker.write("Written by vir_lightning; the next write to this folder replaces it whole.\n")
        if os.path.exists(tmp):
            # mkstemp / mkdtemp make it 0600 / 0700; the result gets the user's umask
            os.chmod(tmp, (0o777 if directory else 0o666) & ~_umask())
        if directory and os.path.isdir(path):
            # Move the old folder aside first, so a crash between the two renames still leaves it.
            old = tempfile.mkdtemp(dir=parent, prefix=f".old-{base}-")
            os.replace(path, os.path.join(old, base))
            try:
                os.replace(tmp, path)
            except BaseException:
                os.replace(os.path.join(old, base), path)
                os.rmdir(old)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        if not directory:  # a folder carries its own mark (OUTPUT_MARKER)
            _remember(path, run)
    except BaseException as err:
        if directory:
            shutil.rmtree(tmp, ignore_errors=True)
        elif os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(err, OSError) and err.errno in _DISK_ERRORS:
            raise ValueError(
                f"cannot write {path!r} ({err.strerror}); free space or choose another location"
                " (the earlier file, if any, is intact)"
            ) from None
        raise


_DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_csv_atomically(
    path: str, header: Sequence[str], rows: Iterable[Sequence], overwrite: bool = False, run: str | None = None
) -> None:
    """Write a CSV through :func:`atomic_output` (``overwrite`` and ``run`` as there)."""
    with atomic_output(path, overwrite=overwrite, run=run) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
