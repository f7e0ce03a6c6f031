"""Atomic writes of output tables: a temporary file in the same folder, renamed into place,
so an interrupted or failed write leaves no partial file and never a half-replaced one."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from memtrace.errors import InputError


def write_stream(dest: Path, fill) -> None:
    """``fill(binary file)`` into a temporary file beside ``dest``, renamed into place when it
    returns: a failed or interrupted write leaves no file and never half of one, and an
    existing ``dest`` stays as it was until then. The file gets the mode a plain open() would
    give it. A folder that does not exist, ``dest`` being a folder, or a failed write is an
    InputError naming ``dest``."""
    dest = Path(dest)
    d = dest.parent if str(dest.parent) else Path(".")
    if not d.is_dir():
        raise InputError(f"{dest}: directory {d} does not exist")
    if dest.is_dir():
        raise InputError(f"{dest}: is a directory")
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            fill(f)
        # mkstemp makes the file 0600: give it the mode a plain open() would
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, dest)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise InputError(f"{dest}: cannot write: {e.strerror or e}") from None
        raise


def write_parquet(df, dest: Path, meta: dict | None = None, meta_key: str = "memtrace") -> None:
    """Write ``df`` as Parquet to ``dest`` (``write_stream``); ``meta`` (JSON-able) goes into
    the schema metadata under ``meta_key``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    def fill(f) -> None:
        table = pa.Table.from_pandas(df, preserve_index=False)
        if meta is not None:
            md = dict(table.schema.metadata or {})
            md[meta_key.encode()] = json.dumps(meta).encode()
            table = table.replace_schema_metadata(md)
        pq.write_table(table, f)

    write_stream(dest, fill)


def write_bytes(data: bytes, dest: Path) -> None:
    """Write ``data`` to ``dest`` atomically (``write_stream``)."""
    write_stream(dest, lambda f: f.write(data))
