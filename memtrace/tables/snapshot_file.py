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
import zlib
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


#: header.json keys memtrace reads, and the JSON type each must have
_HEADER_TYPES = {"kernel": dict, "target": dict, "faults": int, "complete": bool, "notes": list}

#: what reading a damaged zip member can raise (bad CRC, bad deflate stream, cut file)
#: (zipfile raises RuntimeError for a member flagged as encrypted: "password required")
_ZIP_READ_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, UnicodeDecodeError,
                    RuntimeError)


def load(path: Path) -> Snapshot:
    """Read a snapshot file; InputError with a one-line reason if it is not one."""
    import pyarrow as pa

    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not a memtrace snapshot file")
    try:
        z = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    # UnicodeDecodeError: a member name flagged UTF-8 that is not; NotImplementedError: a zip version
    except (zipfile.BadZipFile, OSError, UnicodeDecodeError, NotImplementedError) as e:
        raise InputError(f"{path}: not a memtrace snapshot file ({_one_line(e)})") from None
    with z:
        try:
            raw = z.read("header.json")
        except KeyError:
            raise InputError(f"{path}: not a memtrace snapshot file (no header.json)") from None
        except _ZIP_READ_ERRORS as e:
            raise InputError(f"{path}: damaged snapshot file: cannot read header.json: {_one_line(e)}") from None
        try:
            header = json.loads(raw)
        except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
            raise InputError(f"{path}: damaged snapshot file: header.json is not JSON ({_one_line(e)})") from None
        if not isinstance(header, dict):
            raise InputError(f"{path}: damaged snapshot file: header.json is a JSON {type(header).__name__}, not an object")
        if header.get("schema") != SCHEMA_VERSION:
            raise InputError(f"{path}: snapshot schema {header.get('schema')!r}, this memtrace reads {SCHEMA_VERSION!r}")
        for key, typ in _HEADER_TYPES.items():
            if key in header and not isinstance(header[key], typ):
                raise InputError(
                    f"{path}: damaged snapshot file: header.json {key!r} is {type(header[key]).__name__}, want {typ.__name__}"
                )
        frames = {}
        for name in TABLES:
            member = f"{name}.parquet"
            try:
                blob = z.read(member)
            except KeyError:
                raise InputError(f"{path}: snapshot lacks table {name!r}") from None
            except _ZIP_READ_ERRORS as e:
                raise InputError(f"{path}: damaged snapshot file: cannot read {member}: {_one_line(e)}") from None
            try:
                df = pd.read_parquet(io.BytesIO(blob))
            # the scope is one library call decoding the file's bytes: ArrowInvalid / ArrowIOError
            # for a damaged page or footer, and KeyError / TypeError / ValueError from pyarrow's
            # pandas_compat when the pandas metadata JSON inside the Parquet footer is damaged
            except (pa.ArrowException, OSError, KeyError, TypeError, ValueError) as e:
                raise InputError(f"{path}: damaged snapshot file: {member} is not a readable Parquet table ({_one_line(e)})") from None
            missing = [c for c in TABLES[name] if c.name not in df.columns]
            required = [c.name for c in missing if not c.nullable]
            if required:
                raise InputError(f"{path}: table {name!r} lacks column(s) {', '.join(required)}")
            if missing:
                # a file from before a nullable column was added: the column is unknown, not 0
                for c in missing:
                    df[c.name] = pd.Series(pd.NA, index=df.index, dtype=c.dtype)
                header.setdefault("notes", []).append(
                    f"the file predates column(s) {', '.join(c.name for c in missing)} of table {name!r}: left null")
            try:
                df = coerce(name, df)
            except (ValueError, TypeError, OverflowError) as e:  # astype of the file's values
                raise InputError(f"{path}: table {name!r} does not match the schema: {_one_line(e)}") from None
            bad = validate(name, df)
            if bad:
                raise InputError(f"{path}: table {name!r} does not match the schema: {bad[0]}")
            frames[name] = df
    return Snapshot(header=header, **frames)


def _one_line(e: BaseException, limit: int = 200) -> str:
    msg = " ".join(str(e).split()) or type(e).__name__
    return msg if len(msg) <= limit else msg[:limit] + "..."
