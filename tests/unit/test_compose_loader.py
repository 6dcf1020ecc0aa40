"""Loading compose projects: files, merge rules, names, line numbers, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from cargohold.compose import VolumeType, load_project, normalize_project_name
from cargohold.compose.yamldoc import load_yaml
from cargohold.errors import ComposeError


def write(tmp: Path, name: str, text: str) -> Path:
    path = tmp / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [("MyApp", "myapp"), ("my app!", "myapp"), ("__x-y_z", "x-y_z"), ("Ünï-2", "n-2"), ("a.b", "ab")],
)
def test_normalize_project_name(raw: str, normalized: str) -> None:
    assert normalize_project_name(raw) == normalized


def test_yaml_is_read_as_compose_reads_it() -> None:
    doc = load_yaml("a: no\nb: on\nc: 22:22\nd: 1e3\ne: true\nf: 1.5\ng: 7\nh: yes\n", "x.yaml")
    assert doc == {"a": "no", "b": "on", "c": "22:22", "d": 1000.0, "e": True, "f": 1.5, "g": 7, "h": "yes"}


def test_default_files_and_override_discovery(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "docker-compose.yml", "services:\n  a:\n    image: nginx\n")
    write(tmp_path, "docker-compose.override.yml", "services:\n  a:\n    image: httpd\n")
    monkeypatch.chdir(tmp_path)
    project = load_project(environ={})
    assert [p.name for p in project.files] == ["docker-compose.yml", "docker-compose.override.yml"]
    assert project.services["a"].image == "httpd"


def test_compose_file_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "base.yml", "services:\n  a:\n    image: nginx\n")
    write(tmp_path, "prod.yml", "services:\n  a:\n    image: httpd\n")
    write(tmp_path, "compose.yaml", "services:\n  a:\n    image: ignored\n")
    monkeypatch.chdir(tmp_path)
    project = load_project(environ={"COMPOSE_FILE": "base.yml:prod.yml"})
    assert [p.name for p in project.files] == ["base.yml", "prod.yml"]
    assert project.services["a"].image == "httpd"
    assert load_project(environ={"COMPOSE_FILE": "base.yml;prod.yml", "COMPOSE_PATH_SEPARATOR": ";"}).files[1].name == (
        "prod.yml"
    )


def test_no_compose_file(tmp_path: Path) -> None:
    with pytest.raises(ComposeError, match="no compose file found"):
        load_project(project_directory=tmp_path, environ={})


def test_explicit_files_skip_the_override(tmp_path: Path) -> None:
    base = write(tmp_path, "compose.yaml", "services:\n  a:\n    image: nginx\n")
    write(tmp_path, "compose.override.yaml", "services:\n  a:\n    image: httpd\n")
    assert load_project([base], environ={}).services["a"].image == "nginx"


def test_merge_rules(tmp_path: Path) -> None:
    a = write(
        tmp_path,
        "a.yaml",
        """\
services:
  s:
    image: postgres
    command: ["a", "b"]
    environment: [A=1, B=2]
    labels: {x: "1"}
    volumes:
      - data:/var/lib/postgresql/data
      - ./conf:/etc/conf:ro
    ports: ["1:1"]
volumes:
  data:
    labels: {keep: "yes"}
""",
    )
    b = write(
        tmp_path,
        "b.yaml",
        """\
services:
  s:
    command: ["c"]
    environment:
      B: "3"
    labels: [y=2]
    volumes:
      - other:/var/lib/postgresql/data
      - /scratch
    ports: ["2:2"]
volumes:
  other:
""",
    )
    project = load_project([a, b], project_name="p", environ={})
    s = project.services["s"]
    by_target = {v.target: v for v in s.volumes}
    assert by_target["/var/lib/postgresql/data"].source == "other"
    assert by_target["/var/lib/postgresql/data"].loc.file.endswith("b.yaml")
    assert by_target["/etc/conf"].type is VolumeType.BIND and by_target["/etc/conf"].read_only
    assert by_target["/etc/conf"].source == str(tmp_path / "conf")
    assert by_target["/scratch"].anonymous
    assert [v.target for v in s.volumes] == ["/var/lib/postgresql/data", "/etc/conf", "/scratch"]
    assert s.labels == {"x": "1", "y": "2"}
    assert project.volume_name("data") == "p_data" and project.volume_name("other") == "p_other"


def test_line_numbers_survive_interpolation_and_merge(tmp_path: Path) -> None:
    f = write(tmp_path, "compose.yaml", "# c\nservices:\n  db:\n    image: ${IMG}\n    volumes:\n      - /d\n")
    project = load_project([f], environ={"IMG": "redis"})
    db = project.services["db"]
    assert db.image == "redis" and db.loc.line == 3 and db.volumes[0].loc.line == 6


def test_project_name_precedence(tmp_path: Path) -> None:
    f = write(tmp_path / "Dir.Name", "compose.yaml", "name: FromFile\nservices: {}\n")
    assert load_project([f], environ={}).name == "fromfile"
    assert load_project([f], environ={"COMPOSE_PROJECT_NAME": "FromEnv"}).name == "fromenv"
    assert load_project([f], project_name="Flag", environ={"COMPOSE_PROJECT_NAME": "x"}).name == "flag"
    g = write(tmp_path / "Dir.Name", "other.yaml", "services: {}\n")
    assert load_project([g], environ={}).name == "dirname"


def test_dotenv_in_project_directory_and_env_file_option(tmp_path: Path) -> None:
    f = write(tmp_path, "compose.yaml", "services:\n  a:\n    image: ${IMG}\n")
    write(tmp_path, ".env", "IMG=from-dotenv\n")
    write(tmp_path, "alt.env", "IMG=from-alt\n")
    assert load_project([f], environ={}).services["a"].image == "from-dotenv"
    assert load_project([f], environ={"IMG": "shell"}).services["a"].image == "shell"
    assert load_project([f], env_files=[tmp_path / "alt.env"], environ={}).services["a"].image == "from-alt"


def test_missing_variables_are_collected(tmp_path: Path) -> None:
    f = write(tmp_path, "compose.yaml", "services:\n  a:\n    image: x${TAG}\n")
    assert load_project([f], environ={}).missing_variables == ("TAG",)


def test_external_and_named_volumes(tmp_path: Path) -> None:
    f = write(
        tmp_path,
        "compose.yaml",
        """\
name: p
services: {}
volumes:
  plain:
  named: {name: exact}
  ext: {external: true}
  ext_named: {external: true, name: real}
  legacy: {external: {name: old}}
""",
    )
    v = load_project([f], environ={}).volumes
    assert {k: (x.name, x.external) for k, x in v.items()} == {
        "plain": ("p_plain", False),
        "named": ("exact", False),
        "ext": ("ext", True),
        "ext_named": ("real", True),
        "legacy": ("old", True),
    }


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("services:\n  a: [1]\n", 2, "must be a mapping"),
        ("services:\n  a:\n    image: nginx\n    volumes: /x\n", 4, "volumes must be a list"),
        ("services:\n  a:\n    volumes:\n      - a:b:c:d\n", 4, "invalid volume specification"),
        ("services:\n  a:\n    volumes:\n      - data:relative\n", 4, "must be an absolute path"),
        ("services:\n  a:\n    restart: 3\n", 3, "restart must be a string"),
        ("services:\n  a:\n    extends: nope\n", 3, "no service 'nope'"),
        ("services:\n  a:\n    extends: b\n  b:\n    extends: a\n", 3, "circular"),
        ("volumes:\n  v: 3\n", 2, "must be a mapping"),
        ("services:\n  a:\n    volumes:\n      - type: bind\n        target: /x\n", 4, "needs a source"),
    ],
)
def test_input_errors_name_the_line(tmp_path: Path, text: str, line: int, message: str) -> None:
    f = write(tmp_path, "compose.yaml", text)
    with pytest.raises(ComposeError) as info:
        load_project([f], environ={})
    assert info.value.line == line, str(info.value)
    assert message in str(info.value)
    assert str(info.value).startswith(f"{f}:{line}: ")


def test_unknown_file(tmp_path: Path) -> None:
    with pytest.raises(ComposeError, match="no such file"):
        load_project([tmp_path / "nope.yaml"], environ={})


def test_include_is_reported_not_followed(tmp_path: Path) -> None:
    f = write(tmp_path, "compose.yaml", "include:\n  - other.yaml\nservices:\n  a:\n    image: nginx\n")
    notes = load_project([f], environ={}).notes
    assert len(notes) == 1 and "include: is not followed" in notes[0] and f"{f}:1" in notes[0]
