"""Pure parts of adopt: manifest comparison and the recreate body."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator

from cargohold.services.adopt import Entry, compare, manifest, recreate_body


class _TarPort:
    """Serves one tar for get_archive (all manifest() needs)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def get_archive(self, name_or_id: str, path: str, *, chunk_size: int = 2 << 20) -> Iterator[bytes]:
        for i in range(0, len(self.data), 7):  # odd chunks: the reader must reassemble
            yield self.data[i : i + 7]


def _tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        d = tarfile.TarInfo("data")
        d.type, d.mode = tarfile.DIRTYPE, 0o750
        tar.addfile(d)
        f = tarfile.TarInfo("data/a.txt")
        f.size, f.mode, f.uid, f.gid = 5, 0o640, 1000, 2000
        tar.addfile(f, io.BytesIO(b"hello"))
        s = tarfile.TarInfo("data/link")
        s.type, s.linkname = tarfile.SYMTYPE, "a.txt"
        tar.addfile(s)
    return buf.getvalue()


def test_manifest_reads_a_chunked_tar() -> None:
    m = manifest(_TarPort(_tar()), "c", "/data")  # type: ignore[arg-type]
    assert m["data"].type == "dir" and m["data"].mode == 0o750
    a = m["data/a.txt"]
    assert (a.type, a.size, a.mode, a.uid, a.gid) == ("file", 5, 0o640, 1000, 2000)
    assert a.sha256 == "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    assert m["data/link"].link == "a.txt"


def test_compare_reports_every_kind_of_difference() -> None:
    e = Entry("file", 5, 0o644, 0, 0, "", "x")
    src = {"a": e, "b": e, "c": e}
    dst = {"a": e, "b": Entry("file", 5, 0o600, 0, 1, "", "x"), "d": e}
    assert compare(src, src) == []
    assert compare(src, dst) == ["b: mode, gid differ", "c: missing in the copy", "d: unexpected in the copy"]


def test_recreate_body_swaps_the_mount_and_keeps_the_rest() -> None:
    spec = {
        "Id": "abcdef1234567890",
        "Config": {
            "Image": "app:1",
            "Hostname": "abcdef123456",
            "Env": ["A=1"],
            "Volumes": {"/data": {}, "/cache": {}},
            "Labels": {"x": "y"},
        },
        "HostConfig": {
            "Binds": ["/srv/conf:/conf:ro"],
            "Mounts": [{"Type": "volume", "Target": "/data"}],
            "RestartPolicy": {"Name": "always"},
            "NetworkMode": "none",
            "PortBindings": {},
        },
        "NetworkSettings": {"Networks": {"none": {}}},
    }
    body = recreate_body(spec, "/data", "newvol", {"/data": "a" * 64, "/cache": "b" * 64})
    assert body["Image"] == "app:1" and body["Env"] == ["A=1"] and body["Labels"] == {"x": "y"}
    assert "Hostname" not in body
    assert body["Volumes"] == {"/cache": {}}
    host = body["HostConfig"]
    assert host["RestartPolicy"] == {"Name": "always"} and host["Binds"] == ["/srv/conf:/conf:ro"]
    assert host["Mounts"] == [
        {"Type": "volume", "Source": "b" * 64, "Target": "/cache"},
        {"Type": "volume", "Source": "newvol", "Target": "/data"},
    ]
    assert "NetworkingConfig" not in body
