"""`audit --fix`: round-trip patches that keep comments and formatting, and fix the findings."""

from __future__ import annotations

from pathlib import Path

import pytest

from cargohold.services import audit as svc

ORIGINAL = """\
# Shop stack — comments must survive.
name: shop

x-defaults: &defaults
  restart: unless-stopped   # keep running

services:
  db:
    <<: *defaults
    image: postgres:16      # the main database
    environment:
      POSTGRES_PASSWORD: ${DB_PASSWORD:-example}
  cache:
    image: "redis:7"
    labels:
      - traefik.enable=false
    volumes:
      - /data               # anonymous today
  search:
    image: docker.elastic.co/elasticsearch/elasticsearch:8.15.0
    tmpfs:
      - /usr/share/elasticsearch/data
  web:
    image: nginx:1.27
    volumes:
      - type: volume
        target: /var/cache/nginx

volumes: {}
"""


def _fixed_rules(path: Path) -> set[str]:
    report = svc.audit_files([path], environ={})
    return {f.rule for f in report.findings}


def test_fix_preserves_comments_and_fixes_findings(tmp_path: Path) -> None:
    path = tmp_path / "compose.yaml"
    path.write_text(ORIGINAL)
    before = _fixed_rules(path)
    assert {"stateful-data-anonymous-volume", "tmpfs-data-path", "anonymous-volume"} <= before

    [patch] = svc.fix_files([path], environ={})
    assert patch.path == path and patch.before == ORIGINAL
    diff = patch.diff()
    assert "+      - db-data:/var/lib/postgresql/data" in diff
    assert "-      - /data               # anonymous today" in diff
    assert "+      - cache-data:/data" in diff
    assert "+        source: web-nginx" in diff
    svc.write_patches([patch])
    text = path.read_text()
    for comment in ("# Shop stack — comments must survive.", "# keep running", "# the main database"):
        assert comment in text
    assert "${DB_PASSWORD:-example}" in text and '"redis:7"' in text and "<<: *defaults" in text
    assert "- traefik.enable=false" in text and "- cargohold.consistency=dump" in text

    after = _fixed_rules(path)
    assert not after & {
        "stateful-data-anonymous-volume",
        "stateful-data-writable-layer",
        "tmpfs-data-path",
        "anonymous-volume",
        "consistency-label-missing",
    }
    project = svc.load([path], environ={})
    assert project.volume_name("db-data") == "shop_db-data"
    search = project.services["search"]
    assert [(v.type.value, v.target, v.source) for v in search.volumes] == [
        ("volume", "/usr/share/elasticsearch/data", "search-data")
    ]
    assert svc.fix_files([path], environ={}) == []  # idempotent


def test_untouched_lines_stay_byte_identical(tmp_path: Path) -> None:
    path = tmp_path / "compose.yaml"
    path.write_text(ORIGINAL)
    [patch] = svc.fix_files([path], environ={})
    removed = [line[1:] for line in patch.diff().splitlines() if line.startswith("-") and not line.startswith("---")]
    assert all(
        ("/data" in line or "tmpfs" in line or "volumes:" in line or "/usr/share" in line) for line in removed
    ), removed


def test_fix_targets_the_override_file_that_made_the_entry(tmp_path: Path) -> None:
    (tmp_path / "compose.yaml").write_text(
        "services:\n  db:\n    image: mariadb:11\n    labels: {cargohold.consistency: dump}\n"
        "    volumes: [data:/var/lib/mysql]\nvolumes:\n  data:\n"
    )
    (tmp_path / "compose.override.yaml").write_text("services:\n  db:\n    volumes:\n      - /var/lib/mysql\n")
    patches = svc.fix_files([], project_directory=tmp_path, environ={})
    assert [p.path.name for p in patches] == ["compose.override.yaml"]
    assert "db-mysql:/var/lib/mysql" in patches[0].after
    assert "db-mysql:" in patches[0].after.split("volumes:")[-1]


@pytest.mark.parametrize("indent", [0, 2])
def test_sequence_indentation_is_kept(tmp_path: Path, indent: int) -> None:
    pad = " " * indent
    text = f"services:\n  db:\n    image: postgres\n    volumes:\n{pad}    - ./x:/x\n    labels:\n{pad}    - a=b\n"
    path = tmp_path / "compose.yaml"
    path.write_text(text)
    (tmp_path / "x").mkdir()
    [patch] = svc.fix_files([path], environ={})
    assert f"\n{pad}    - ./x:/x\n{pad}    - db-data:/var/lib/postgresql/data\n" in patch.after


def test_anchored_lists_are_not_changed_for_other_services(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    path = tmp_path / "compose.yaml"
    path.write_text(
        "x-vols: &vols\n  - ./a:/a\nservices:\n  db:\n    image: postgres\n    labels: {cargohold.consistency: dump}\n"
        "    volumes: *vols\n  web:\n    image: nginx\n    volumes: *vols\n"
    )
    [patch] = svc.fix_files([path], environ={})
    svc.write_patches([patch])
    project = svc.load([path], environ={})
    assert [v.target for v in project.services["web"].volumes] == ["/a"]
    assert [v.target for v in project.services["db"].volumes] == ["/a", "/var/lib/postgresql/data"]


def test_two_paths_of_one_service_get_two_volumes(tmp_path: Path) -> None:
    path = tmp_path / "compose.yaml"
    path.write_text(
        "name: app\nservices:\n  app:\n    image: nginx:1.27\n    volumes:\n      - /srv/a/data\n      - /srv/b/data\n"
    )
    [patch] = svc.fix_files([path], environ={})
    svc.write_patches([patch])
    project = svc.load([path], environ={})
    sources = [v.source for v in project.services["app"].volumes]
    assert len(sources) == 2 and len(set(sources)) == 2, sources
