"""safetensors files written and read a slice of rows at a time, so that a split's tensors (the cached states:
gigabytes) never sit in memory whole, and memory stays flat however large the corpus.

The format (https://github.com/huggingface/safetensors#format): an 8-byte little-endian header size, a JSON
header giving each tensor's dtype, shape and byte range, then the bytes. The writer lays out the header first and
writes rows in place; the reader reads rows with pread. Both go through the page cache, which the kernel reclaims,
where an mmap'd file's pages would count in the process's resident memory. The files are ordinary safetensors
files: safetensors.torch.load_file reads them.
"""

import json
import math
import os
import struct
from pathlib import Path

import torch

CODES = {
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float32: "F32",
    torch.float64: "F64",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
DTYPES = {code: dtype for dtype, code in CODES.items()}


class DamagedFile(ValueError):
    """The file is not a whole safetensors file (truncated, overwritten, or another format)."""


class Writer:
    """A safetensors file of the tensors in `layout` (name: (dtype, shape)), filled in by write() in any order."""

    def __init__(self, path, layout: dict[str, tuple[torch.dtype, tuple[int, ...]]]):
        self.header, end = {}, 0
        for name, (dtype, shape) in layout.items():
            size = math.prod(shape) * dtype.itemsize
            self.header[name] = {"dtype": CODES[dtype], "shape": list(shape), "data_offsets": [end, end + size]}
            end += size
        text = json.dumps(self.header, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)  # the format pads the header with spaces to 8 bytes
        self.start = 8 + len(text)
        self.file = open(path, "wb")  # closed by close()
        self.file.write(struct.pack("<Q", len(text)) + text)
        self.file.truncate(self.start + end)  # a sparse file until written: the size the header promises

    def write(self, name: str, first_row: int, rows: torch.Tensor) -> None:
        """Rows `first_row`, first_row + 1, ... of tensor `name`."""
        info = self.header[name]
        rows = rows.to(DTYPES[info["dtype"]]).contiguous()
        row_bytes = math.prod(info["shape"][1:]) * rows.dtype.itemsize
        offset = self.start + info["data_offsets"][0] + first_row * row_bytes
        assert offset + rows.numel() * rows.dtype.itemsize <= self.start + info["data_offsets"][1], name
        os.pwrite(self.file.fileno(), rows.view(torch.uint8).numpy(), offset)

    def close(self) -> None:
        self.file.close()


class Reader:
    """The tensors of a safetensors file, read a slice of rows at a time (read) or whole (tensor)."""

    def __init__(self, path):
        self.path = Path(path)
        self.file = open(path, "rb")  # open for the reader's life
        try:
            (size,) = struct.unpack("<Q", self.file.read(8))
            if size > 100_000_000:  # safetensors' own limit
                raise DamagedFile(f"a header of {size} bytes")
            self.header = json.loads(self.file.read(size))
            self.header.pop("__metadata__", None)
            self.start = 8 + size
            ends = [info["data_offsets"][1] for info in self.header.values()]
            stored = os.fstat(self.file.fileno()).st_size - self.start
            if max(ends, default=0) != stored:
                raise DamagedFile(f"its header describes {max(ends, default=0)} bytes of data, the file holds {stored}")
        except (struct.error, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
            self.file.close()
            raise DamagedFile(f"its header cannot be read ({type(err).__name__})") from None
        except DamagedFile:
            self.file.close()
            raise

    def shape(self, name: str) -> list[int]:
        return self.header[name]["shape"]

    def read(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows start..stop-1 of tensor `name`."""
        info = self.header[name]
        dtype, shape = DTYPES[info["dtype"]], info["shape"]
        row_bytes = math.prod(shape[1:]) * dtype.itemsize
        if stop <= start:
            return torch.empty(0, *shape[1:], dtype=dtype)
        offset = self.start + info["data_offsets"][0] + start * row_bytes
        data = bytearray(os.pread(self.file.fileno(), (stop - start) * row_bytes, offset))
        return torch.frombuffer(data, dtype=dtype).reshape(stop - start, *shape[1:])

    def tensor(self, name: str) -> torch.Tensor:
        return self.read(name, 0, self.shape(name)[0])
