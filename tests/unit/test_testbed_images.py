"""Pure parts of the image builder: tars, ELF check, progress streams."""

from __future__ import annotations

import io
import json
import struct
import sys
import tarfile

import pytest

from cargohold.errors import TestbedError
from cargohold.testbed.images import _check_stream, busybox_tar, elf_is_static, file_tar


def _elf(program_types: list[int]) -> bytes:
    header = bytearray(64)
    header[:4] = b"\x7fELF"
    header[4] = 2  # 64-bit
    header[5] = 1  # little endian
    struct.pack_into("<Q", header, 0x20, 64)  # e_phoff
    struct.pack_into("<HH", header, 0x36, 56, len(program_types))
    table = b"".join(struct.pack("<I", t) + bytes(52) for t in program_types)
    return bytes(header) + table


def test_elf_static_check() -> None:
    assert elf_is_static(_elf([1, 1, 4]))
    assert not elf_is_static(_elf([6, 3, 1]))  # PT_INTERP: dynamic
    assert not elf_is_static(b"#!/bin/sh\n" + bytes(100))
    with open(sys.executable, "rb") as handle:
        assert not elf_is_static(handle.read(64 * 1024))  # CPython is linked dynamically


def test_busybox_tar_has_the_binary_links_and_a_root_skeleton() -> None:
    data = busybox_tar(b"\x7fELF-fake", ("bin/sh", "usr/sbin/chroot", "bin/busybox"))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = {m.name: m for m in tar.getmembers()}
        binary = members["bin/busybox"]
        assert binary.isfile() and binary.mode == 0o755
        extracted = tar.extractfile(binary)
        assert extracted is not None and extracted.read() == b"\x7fELF-fake"
    assert members["bin/sh"].issym() and members["bin/sh"].linkname == "/bin/busybox"
    assert members["usr/sbin/chroot"].issym()
    assert members["usr/sbin"].isdir() and members["usr"].isdir()
    assert members["tmp"].mode == 0o1777
    assert members["etc/passwd"].isfile()
    assert busybox_tar(b"x", ("bin/sh",)) == busybox_tar(b"x", ("bin/sh",))  # deterministic


def test_file_tar_holds_one_executable() -> None:
    with tarfile.open(fileobj=io.BytesIO(file_tar("run", "#!/bin/sh\n"))) as tar:
        (member,) = tar.getmembers()
        assert member.name == "run" and member.mode == 0o755 and member.size == 10


def test_progress_stream_errors_raise() -> None:
    ok = "\n".join(json.dumps(x) for x in ({"status": "Loading"}, {"status": "sha256:abc"}))
    assert _check_stream(ok, "import") == "sha256:abc"
    assert _check_stream(ok.encode(), "import") == "sha256:abc"
    bad = json.dumps({"errorDetail": {"message": "no space left"}, "error": "no space left"})
    with pytest.raises(TestbedError, match="import: no space left"):
        _check_stream(ok + "\n" + bad, "import")
