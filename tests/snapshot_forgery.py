"""Damaged KB snapshots for the tests (``kato_grpc/stores/snapshot.py``): archives taken
apart and zipped anew, so the zip's own CRCs are right and only the decoder's checks can
refuse them (a store's SHA-256 is recomputed by whoever stores them)."""

from __future__ import annotations

import io
import zipfile
from typing import Any

import numpy as np
import numpy.typing as npt


def members(blob: bytes) -> dict[str, bytes]:
    """The archive's ``.npy`` members by array name."""
    with zipfile.ZipFile(io.BytesIO(blob)) as archive:
        return {i.filename.removesuffix(".npy"): archive.read(i) for i in archive.infolist()}


def arrays(blob: bytes) -> dict[str, npt.NDArray[Any]]:
    """The arrays of a sound archive (read with np.load: only for archives known to be sound)."""
    with np.load(io.BytesIO(blob), allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


def archive(parts: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    """Members zipped anew, their CRCs computed."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression) as zipped:
        for name, data in parts.items():
            zipped.writestr(f"{name}.npy", data)
    return out.getvalue()


def npy(array: npt.NDArray[Any]) -> bytes:
    out = io.BytesIO()
    np.lib.format.write_array(out, array, allow_pickle=False)
    return out.getvalue()


def declaring(shape: tuple[int, ...], descr: str, data: bytes) -> bytes:
    """A ``.npy`` member whose header declares ``shape`` and ``descr``, then ``data``."""
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, {"shape": shape, "fortran_order": False, "descr": descr})
    return out.getvalue() + data


def replaced(blob: bytes, **changes: npt.NDArray[Any] | bytes) -> bytes:
    """``blob`` with members replaced: by arrays (encoded) or by raw ``.npy`` bytes."""
    parts = members(blob)
    parts.update({k: v if isinstance(v, bytes) else npy(v) for k, v in changes.items()})
    return archive(parts)


def oversized(blob: bytes, count: int = 2**40) -> bytes:
    """``blob`` whose symbol ids (``flat``) declare ``count`` elements, their bytes unchanged:
    loading it as declared would allocate ``count`` × the item size."""
    flat = arrays(blob)["flat"]
    return replaced(blob, flat=declaring((count,), flat.dtype.str, flat.tobytes()))
