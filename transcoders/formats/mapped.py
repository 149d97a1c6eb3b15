"""Memory-mapped safetensors files: tensors that are views of the file, read from disk on first use.

Follows the safetensors format (github.com/huggingface/safetensors, ``docs/source/index.mdx``,
"Format"): 8 bytes little-endian header length N, N bytes of JSON (``{name: {"dtype", "shape",
"data_offsets": [begin, end]}}`` with offsets into the byte buffer that follows, and an optional
``"__metadata__"``), then the buffer. ``safetensors.safe_open`` maps files too, but whether its
tensors are views or copies depends on its version, and it cannot hand pages back; this does both.

The mapping is private (copy-on-write): writing to a tensor never changes the file. A file that
is overwritten in place (not replaced) while mapped gives undefined values; our writers and the
hub cache always write a new file and rename it.
"""

from __future__ import annotations

import ctypes
import json
import math
import mmap
import os
from pathlib import Path

import torch
from torch import Tensor

from transcoders.formats.common import TranscoderLoadError

DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
PAGE = mmap.PAGESIZE


class MappedFile:
    """One safetensors file, mapped. ``file[key]`` is a ``Tensor`` view of it (no copy)."""

    def __init__(self, file: str | Path) -> None:
        self.file = Path(file)
        try:
            with open(self.file, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                n = int.from_bytes(f.read(8), "little")
                if size < 8 or not 0 < n <= size - 8:
                    raise ValueError(f"a header of {n} bytes in a file of {size}")
                header = json.loads(f.read(n))
                entries = {k: v for k, v in header.items() if k != "__metadata__"} if isinstance(header, dict) else None
                if entries is None or not all(isinstance(v, dict) and {"dtype", "shape", "data_offsets"} <= v.keys()
                                              for v in entries.values()):
                    raise ValueError("its header is not a table of tensors")
                self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) if size > 8 + n else None
        except (OSError, ValueError) as exc:  # JSONDecodeError is a ValueError
            raise TranscoderLoadError(f"{self.file} is not a readable safetensors file ({exc}). "
                                      "Fix: download or save it again.") from exc
        header.pop("__metadata__", None)
        self._entries: dict[str, dict] = header
        self._start = 8 + n
        self._addr = ctypes.addressof(ctypes.c_char.from_buffer(self._mm)) if self._mm is not None else 0

    def keys(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._entries[key]["shape"])

    def dtype(self, key: str) -> torch.dtype:
        return DTYPES[self._entries[key]["dtype"]]

    def __getitem__(self, key: str) -> Tensor:
        """The tensor ``key``: a view of the mapped file, read from disk as it is touched."""
        entry = self._entries[key]
        if entry.get("dtype") not in DTYPES:
            raise TranscoderLoadError(f"{self.file}: {key} has dtype {entry.get('dtype')!r}, which this reader does "
                                      f"not know ({sorted(DTYPES)}). Fix: save the set in float32 or bfloat16.")
        dtype, shape = DTYPES[entry["dtype"]], tuple(entry["shape"])
        begin, end = entry["data_offsets"]
        numel = math.prod(shape)
        itemsize = torch.empty((), dtype=dtype).element_size()
        if end - begin != numel * itemsize or self._start + end > len(self._mm or b""):
            raise TranscoderLoadError(f"{self.file}: {key}'s bytes do not match its shape {list(shape)} (the file is "
                                      "truncated or damaged). Fix: download or save it again.")
        if numel == 0:
            return torch.empty(shape, dtype=dtype)
        t = torch.frombuffer(self._mm, dtype=dtype, count=numel, offset=self._start + begin).view(shape)
        # Misaligned data (an odd-sized tensor before it) works but slows every kernel: copy it.
        return t.clone() if (self._start + begin) % itemsize else t

    def release(self, t: Tensor) -> None:
        """Hand the pages of ``t`` (a contiguous view of this file) back to the kernel: the process's
        resident memory drops, and a later read pages them in again. Only for views that nothing has
        written to (``MADV_DONTNEED`` would drop the written, private copies), i.e. while loading."""
        if self._mm is None or not hasattr(mmap, "MADV_DONTNEED") or t.numel() == 0 or not t.is_contiguous():
            return
        offset = t.data_ptr() - self._addr
        if not 0 <= offset < len(self._mm):
            return  # a copy (misaligned), not a view of the mapping
        begin = offset // PAGE * PAGE
        end = min(len(self._mm), -(-(offset + t.numel() * t.element_size()) // PAGE) * PAGE)
        self._mm.madvise(mmap.MADV_DONTNEED, begin, end - begin)
