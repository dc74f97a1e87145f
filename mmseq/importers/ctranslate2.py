"""A pure-Python reader of CTranslate2's ``model.bin``, so that faster-whisper folders can be read
without CTranslate2 (a C++ runtime that may not be installed, and that trusts the file).

The layout (``ctranslate2/specs/model_spec.py`` ``_serialize``, binary version 6, little-endian):
``u32 version``, ``string spec``, ``u32 revision``, ``u32 count``, then per variable ``string name``,
``u8 rank``, ``rank × u32 shape``, ``u8 dtype``, ``u32 bytes``, the bytes; then ``u32 count`` aliases
of ``string alias``, ``string target``. A string is ``u16 length`` (counting a closing NUL), the
UTF-8 bytes and the NUL. The file is untrusted: every count and length is checked against the
file's size (and every byte count against shape × dtype size) before anything is allocated, and
variables are read one by one, so memory stays that of the tensors returned.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass

import torch

from ..data.files import escape, open_regular
from ..errors import CheckpointError

# CTranslate2's DataType enum (include/ctranslate2/types.h); model_spec.py writes the same order.
DTYPES = {0: torch.float32, 1: torch.int8, 2: torch.int16, 3: torch.int32, 4: torch.float16, 5: torch.bfloat16}
VERSIONS = range(4, 7)  # dtype codes and aliases since version 4; 6 is what CTranslate2 4.x writes
MAX_RANK = 8


@dataclass
class ModelBin:
    """The contents of a ``model.bin``: tensors in their stored dtype (float16 and bfloat16 turned
    into float32 as they are read when asked), and aliases (``name -> name of the variable it is``)."""
    path: str
    binary_version: int
    spec: str
    revision: int
    variables: dict[str, torch.Tensor]
    aliases: dict[str, str]

    def get(self, name: str) -> torch.Tensor:
        """A variable by name or alias; :class:`CheckpointError` when it is missing."""
        found = self.variables.get(self.aliases.get(name, name))
        if found is None:
            raise CheckpointError(f"{escape(self.path)}: missing variable {escape(name)}")
        return found


def read_model_bin(path: str | os.PathLike, float32: bool = True) -> ModelBin:
    """Read a CTranslate2 ``model.bin``; :class:`CheckpointError` (one line naming the file) when it
    is truncated, promises more bytes than it has, uses an unknown dtype or version, or has bytes
    after its end. ``float32``: convert float16/bfloat16 variables to float32 one at a time."""
    path = os.fspath(path)
    with open_regular(path, "CTranslate2 model", CheckpointError) as file:
        reader = _Reader(file, os.fstat(file.fileno()).st_size, path)
        version = reader.unpack("I")
        if version not in VERSIONS:
            reader.fail(f"unsupported binary version {version} (known: {VERSIONS.start} to {VERSIONS.stop - 1})")
        spec, revision, count = reader.string(), reader.unpack("I"), reader.unpack("I")
        if count * 9 > reader.left():  # the smallest record: empty name, rank 0, dtype, byte count
            reader.fail(f"header promises {count} variables, more than the file can hold")
        variables = {}
        for _ in range(count):
            name = reader.string()
            if name in variables:
                reader.fail(f"variable {name} appears twice")
            variables[name] = reader.variable(name, float32)
        aliases = {}
        for _ in range(reader.unpack("I")):
            alias, target = reader.string(), reader.string()
            if target not in variables:
                reader.fail(f"alias {alias} points to missing variable {target}")
            aliases[alias] = target
        if reader.left():
            reader.fail(f"{reader.left()} unexpected bytes after the last alias")
    return ModelBin(path, version, spec, revision, variables, aliases)


class _Reader:
    """Bounded reads from an open file: each read is checked against the bytes left first."""

    def __init__(self, file, size: int, path: str):
        self.file, self.size, self.path = file, size, path

    def fail(self, reason: str):
        raise CheckpointError(f"{escape(self.path)}: {escape(reason)}")  # names in the file may hold newlines

    def left(self) -> int:
        return self.size - self.file.tell()

    def read(self, size: int, what: str) -> bytearray:
        if size > self.left():
            self.fail(f"truncated: {what} needs {size} bytes at offset {self.file.tell()}, "
                      f"{self.left()} left (the file has {self.size})")
        data = bytearray(size)
        if self.file.readinto(data) != size:  # the file shrank while being read
            self.fail(f"truncated: {what} at offset {self.file.tell()}")
        return data

    def unpack(self, fmt: str):
        return struct.unpack(f"<{fmt}", self.read(struct.calcsize(f"<{fmt}"), "a header field"))[0]

    def string(self) -> str:
        data = self.read(self.unpack("H"), "a name")
        if not data or data[-1] != 0:
            self.fail(f"corrupt name at offset {self.file.tell() - len(data)} (no closing NUL)")
        try:
            return data[:-1].decode("utf-8")
        except UnicodeDecodeError:
            self.fail(f"corrupt name at offset {self.file.tell() - len(data)} (not UTF-8)")

    def variable(self, name: str, float32: bool) -> torch.Tensor:
        rank = self.unpack("B")
        if rank > MAX_RANK:
            self.fail(f"variable {name} has rank {rank} (at most {MAX_RANK})")
        shape = struct.unpack(f"<{rank}I", self.read(4 * rank, f"the shape of {name}"))
        code, size = self.unpack("B"), self.unpack("I")
        dtype = DTYPES.get(code)
        if dtype is None:
            self.fail(f"variable {name} has unknown dtype code {code}")
        expected = math.prod(shape) * dtype.itemsize
        if size != expected:
            self.fail(f"variable {name} of shape {list(shape)} and dtype {str(dtype)[6:]} needs {expected} bytes, "
                      f"the header says {size}")
        if not size:
            return torch.empty(shape, dtype=torch.float32 if float32 and dtype.is_floating_point else dtype)
        tensor = torch.frombuffer(self.read(size, f"variable {name}"), dtype=dtype).reshape(shape)
        return tensor.float() if float32 and dtype in (torch.float16, torch.bfloat16) else tensor
