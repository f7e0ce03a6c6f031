"""The snapshot file: a zip holding ``header.json`` and one Parquet file per table.

``header.json``: ``schema`` (``memtrace.snapshot/1``), ``kernel`` (release, build_id,
vmlinux), ``target`` (kind and path), ``created`` (UTC ISO time), ``faults`` (count of
drgn faults during the walk; non-zero only on live targets), ``complete``, ``notes``.
Report commands load this in place of a kernel.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pandas as pd

from memtrace.errors import InputError
from memtrace.tables.snapshot import SCHEMA_VERSION, TABLES, Snapshot, coerce, validate


def save(snap: Snapshot, path: Path) -> None:
    """Write ``snap`` to ``path`` (atomically: a temporary file renamed into place)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    header = dict(snap.header, schema=SCHEMA_VERSION, tables=list(TABLES))
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr("header.json", json.dumps(header, indent=1, sort_keys=True) + "\n")
        for name in TABLES:
            buf = io.BytesIO()
            snap.table(name).to_parquet(buf, index=False, compression="zstd")
            z.writestr(f"{name}.parquet", buf.getvalue())
    tmp.replace(path)


def load(path: Path) -> Snapshot:
    """Read a snapshot file; InputError with a one-line reason if it is not one."""
    path = Path(path)
    try:
        z = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (zipfile.BadZipFile, OSError) as e:
        raise InputError(f"{path}: not a memtrace snapshot file ({e})") from None
    with z:
        try:
            header = json.loads(z.read("header.json"))
        except (KeyError, ValueError):
            raise InputError(f"{path}: not a memtrace snapshot file (no header.json)") from None
        if header.get("schema") != SCHEMA_VERSION:
            raise InputError(f"{path}: snapshot schema {header.get('schema')!r}, this memtrace reads {SCHEMA_VERSION!r}")
        frames = {}
        for name in TABLES:
            try:
                df = pd.read_parquet(io.BytesIO(z.read(f"{name}.parquet")))
            except KeyError:
                raise InputError(f"{path}: snapshot lacks table {name!r}") from None
            df = coerce(name, df)
            bad = validate(name, df)
            if bad:
                raise InputError(f"{path}: table {name!r} does not match the schema: {bad[0]}")
            frames[name] = df
    return Snapshot(header=header, **frames)
