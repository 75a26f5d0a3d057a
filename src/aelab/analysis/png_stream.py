"""An 8-bit RGB PNG written a band of rows at a time, so the whole image is never in memory.

Pillow encodes only whole images. PNG itself streams: the rows, each prefixed with its filter,
go through one zlib stream cut into IDAT chunks. Each row gets the filter the PNG specification's
heuristic picks: the smallest sum of absolute filtered values.
"""

from __future__ import annotations

import struct
import zlib
from typing import BinaryIO

import numpy as np

SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHANNELS = 3
ROWS_PER_CHUNK = 16  # rows filtered at once: five int16 copies of them stay a few MB


class PngStream:
    """Write rows with `write`, in order, then `close`; a missing or extra row is an error."""

    def __init__(self, file: BinaryIO, width: int, height: int, level: int = 6) -> None:
        self.file, self.width, self.height, self.rows_written = file, width, height, 0
        self.compressor = zlib.compressobj(level)
        self.previous = np.zeros((width * CHANNELS,), dtype=np.uint8)
        file.write(SIGNATURE)
        self._chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))

    def write(self, rows: np.ndarray) -> None:
        """uint8 rows (h, width, 3), the next h rows of the image."""
        if rows.shape[1:] != (self.width, CHANNELS) or rows.dtype != np.uint8:
            raise ValueError(f"rows of shape {rows.shape} {rows.dtype}, not (h, {self.width}, 3)")
        if self.rows_written + len(rows) > self.height:
            raise ValueError("more rows than the image's height")
        flat = rows.reshape(len(rows), -1)
        for start in range(0, len(flat), ROWS_PER_CHUNK):
            chunk = flat[start : start + ROWS_PER_CHUNK]
            data = self.compressor.compress(filtered(chunk, self.previous).tobytes())
            if data:
                self._chunk(b"IDAT", data)
            self.previous = chunk[-1]
        self.rows_written += len(rows)

    def close(self) -> None:
        if self.rows_written != self.height:
            raise ValueError(f"{self.rows_written} rows written of {self.height}")
        self._chunk(b"IDAT", self.compressor.flush())
        self._chunk(b"IEND", b"")

    def _chunk(self, kind: bytes, data: bytes) -> None:
        self.file.write(struct.pack(">I", len(data)) + kind + data)
        self.file.write(struct.pack(">I", zlib.crc32(kind + data)))


def filtered(rows: np.ndarray, previous: np.ndarray) -> np.ndarray:
    """Rows (h, n) uint8 → (h, 1 + n): each row's best filter type, then the row filtered by it."""
    x = rows.astype(np.int16)
    above = np.vstack([previous[None].astype(np.int16), x[:-1]])
    left = np.pad(x, ((0, 0), (CHANNELS, 0)))[:, : x.shape[1]]
    upper_left = np.pad(above, ((0, 0), (CHANNELS, 0)))[:, : x.shape[1]]
    candidates = np.stack(
        [x, x - left, x - above, x - (left + above) // 2, x - paeth(left, above, upper_left)]
    ).astype(np.uint8)  # (5, h, n), modulo 256 as PNG wants
    cost = np.abs(candidates.view(np.int8).astype(np.int32)).sum(axis=2)
    best = cost.argmin(axis=0)
    chosen = candidates[best, np.arange(len(rows))]
    return np.hstack([best.astype(np.uint8)[:, None], chosen])


def paeth(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """PNG's Paeth predictor: of left, above and upper-left, the one nearest left + above − it."""
    estimate = a + b - c
    pa, pb, pc = np.abs(estimate - a), np.abs(estimate - b), np.abs(estimate - c)
    return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
