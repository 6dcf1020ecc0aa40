"""``audit --fix``: patch compose files so at-risk data paths get named volumes.

Round-trip YAML (ruamel.yaml) keeps comments, key order, quotes, anchors and the file's
indentation; only the entries that change are rewritten. What it does per finding:

* data on an anonymous volume / writable layer / tmpfs (``stateful-data-*``,
  ``anonymous-volume``, ``tmpfs-data-path``, ``database-restart-always-no-volume``):
  the bare ``- /path`` entry becomes ``- SERVICE-NAME:/path`` (long syntax: a ``source``
  is added), or such an entry is appended; a tmpfs on that path is removed; the volume
  is declared at the top level;
* ``consistency-label-missing``: ``cargohold.consistency: MODE`` is added to the labels.
"""

from __future__ import annotations

import difflib
import io
import itertools
import posixpath
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError

from cargohold.audit.findings import Finding
from cargohold.audit.knowledge import lookup
from cargohold.audit.model import Workload
from cargohold.audit.rules import volume_key_for
from cargohold.compose.model import ComposeProject
from cargohold.errors import ComposeError
from cargohold.model.consistency import LABEL_MODE

VOLUME_RULES = frozenset(
    {
        "stateful-data-anonymous-volume",
        "stateful-data-writable-layer",
        "anonymous-volume",
        "tmpfs-data-path",
        "database-restart-always-no-volume",
    }
)
LABEL_RULES = frozenset({"consistency-label-missing"})
FIXABLE = VOLUME_RULES | LABEL_RULES


@dataclass
class FilePatch:
    path: Path
    before: str
    after: str
    changes: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return self.before != self.after

    def diff(self) -> str:
        return "".join(
            difflib.unified_diff(
                self.before.splitlines(keepends=True),
                self.after.splitlines(keepends=True),
                fromfile=f"a/{self.path}",
                tofile=f"b/{self.path}",
            )
        )


def _indent_style(text: str) -> tuple[int, int, int]:
    """(mapping, sequence, offset) indentation as the file uses it, for ruamel to keep."""
    lines = text.splitlines()
    mapping = 2
    for a, b in itertools.pairwise(lines):
        ma = re.match(r"^(\s*)[^\s#-][^:]*:\s*(#.*)?$", a)
        mb = re.match(r"^(\s*)[^\s#-]", b)
        if ma and mb and len(mb.group(1)) > len(ma.group(1)):
            mapping = len(mb.group(1)) - len(ma.group(1))
            break
    for a, b in itertools.pairwise(lines):
        ma = re.match(r"^(\s*)[^\s#-][^:]*:\s*(#.*)?$", a)
        mb = re.match(r"^(\s*)-\s", b)
        if ma and mb:
            offset = max(0, len(mb.group(1)) - len(ma.group(1)))
            return mapping, offset + 2, offset
    return mapping, mapping + 2, mapping


class _Doc:
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.before = path.read_text(encoding="utf-8")
        except OSError as err:
            raise ComposeError(f"cannot read: {err.strerror or err}", file=str(path)) from None
        self.yaml = YAML(typ="rt")
        self.yaml.preserve_quotes = True
        self.yaml.width = 4096
        mapping, sequence, offset = _indent_style(self.before)
        self.yaml.indent(mapping=mapping, sequence=sequence, offset=offset)
        try:
            self.data: Any = self.yaml.load(self.before)
        except YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            raise ComposeError(
                f"invalid YAML: {getattr(err, 'problem', err)}",
                file=str(path),
                line=mark.line + 1 if mark is not None else None,
            ) from None
        self.changes: list[str] = []

    def services(self) -> CommentedMap | None:
        svc = self.data.get("services") if isinstance(self.data, CommentedMap) else None
        return svc if isinstance(svc, CommentedMap) else None

    def render(self) -> str:
        out = io.StringIO()
        self.yaml.dump(self.data, out)
        return out.getvalue()


def _target(entry: Any) -> str | None:
    if isinstance(entry, str):
        parts = entry.split(":")
        return posixpath.normpath(parts[0] if len(parts) == 1 else parts[1])
    if isinstance(entry, dict) and isinstance(entry.get("target"), str):
        return posixpath.normpath(str(entry["target"]))
    return None


def _declare(doc: _Doc, key: str) -> None:
    top = doc.data.get("volumes")
    if top is None:
        top = CommentedMap()
        doc.data["volumes"] = top
    if isinstance(top, CommentedMap) and key not in top:
        top[key] = None
        doc.changes.append(f"declared volume {key}")


def _drop_tmpfs(svc: CommentedMap, path: str) -> bool:
    tmpfs = svc.get("tmpfs")
    if isinstance(tmpfs, str) and posixpath.normpath(tmpfs.split(":", 1)[0]) == path:
        del svc["tmpfs"]
        return True
    if isinstance(tmpfs, CommentedSeq):
        for i, item in enumerate(tmpfs):
            if isinstance(item, str) and posixpath.normpath(item.split(":", 1)[0]) == path:
                del tmpfs[i]
                if not tmpfs:
                    del svc["tmpfs"]
                return True
    return False


def _own(svc: CommentedMap, key: str) -> Any:
    """The service's own copy of ``svc[key]`` when it is an anchored (shared) node.

    Editing an anchored list or mapping would change every service that uses the alias.
    """
    value = svc.get(key)
    anchor = getattr(value, "anchor", None)
    if anchor is None or anchor.value is None:
        return value
    if isinstance(value, CommentedSeq):
        copy: Any = CommentedSeq(list(value))
    elif isinstance(value, CommentedMap):
        copy = CommentedMap(value.items())
    else:
        return value
    svc[key] = copy
    return copy


def _add_volume(doc: _Doc, svc: CommentedMap, service: str, key: str, path: str) -> bool:
    vols = _own(svc, "volumes")
    dropped = _drop_tmpfs(svc, path)
    if isinstance(vols, CommentedSeq):
        for i, entry in enumerate(vols):
            if _target(entry) != path:
                continue
            if isinstance(entry, str) and ":" not in entry:
                vols[i] = f"{key}:{entry}"
            elif isinstance(entry, str):
                return dropped  # already a named volume or a bind: nothing to do
            elif isinstance(entry, CommentedMap) and entry.get("type") == "volume" and not entry.get("source"):
                entry.insert(1, "source", key)
            elif isinstance(entry, CommentedMap) and entry.get("type") == "tmpfs":
                vols[i] = f"{key}:{path}"
            else:
                return dropped
            doc.changes.append(f"{service}: named volume {key} at {path}")
            _declare(doc, key)
            return True
        vols.append(f"{key}:{path}")
    else:
        seq = CommentedSeq([f"{key}:{path}"])
        svc["volumes"] = seq
    doc.changes.append(f"{service}: named volume {key} at {path}")
    _declare(doc, key)
    return True


def _add_label(doc: _Doc, svc: CommentedMap, service: str, mode: str) -> None:
    labels = _own(svc, "labels")
    if isinstance(labels, CommentedSeq):
        if not any(isinstance(x, str) and x.startswith(LABEL_MODE + "=") for x in labels):
            labels.append(f"{LABEL_MODE}={mode}")
    elif isinstance(labels, CommentedMap):
        if LABEL_MODE not in labels:
            labels[LABEL_MODE] = mode
    else:
        svc["labels"] = CommentedMap([(LABEL_MODE, mode)])
    doc.changes.append(f"{service}: label {LABEL_MODE}={mode}")


def plan_fixes(project: ComposeProject, findings: Iterable[Finding]) -> list[FilePatch]:
    """Patched texts of the compose files (nothing is written here)."""
    docs: dict[Path, _Doc] = {}

    def doc_for(file: str) -> _Doc:
        path = Path(file)
        if path not in docs:
            docs[path] = _Doc(path)
        return docs[path]

    done: set[tuple[str, str]] = set()
    taken = set(project.volumes)  # volume keys in use, including those this run adds
    for f in findings:
        if f.rule not in FIXABLE or not f.service or f.container:
            continue
        service = project.services.get(f.service)
        if service is None:
            continue
        # The file that wrote the entry in question, else the one that defines the service.
        target_file = f.file if f.file and f.rule != "consistency-label-missing" else service.loc.file
        doc = doc_for(target_file)
        services = doc.services()
        svc = services.get(f.service) if services is not None else None
        if not isinstance(svc, CommentedMap):
            doc = doc_for(service.loc.file)
            services = doc.services()
            svc = services.get(f.service) if services is not None else None
            if not isinstance(svc, CommentedMap):
                continue
        if f.rule in LABEL_RULES:
            entry = lookup(service.image)
            if entry is not None and (f.service, "label") not in done:
                done.add((f.service, "label"))
                _add_label(doc, svc, f.service, entry.consistency.value)
            continue
        if not f.path or (f.service, f.path) in done:
            continue
        done.add((f.service, f.path))
        w = Workload(name=f.service, image=service.image, mounts=(), kind="service", service=f.service)
        key = volume_key_for(w, f.path)
        n = 2
        base = key
        while key in taken:
            key = f"{base}-{n}"
            n += 1
        taken.add(key)  # two paths of one service must not share a new volume
        _add_volume(doc, svc, f.service, key, posixpath.normpath(f.path))
    patches = []
    for path, doc in docs.items():
        if doc.changes:
            patches.append(FilePatch(path=path, before=doc.before, after=doc.render(), changes=doc.changes))
    return patches
