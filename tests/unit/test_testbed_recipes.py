"""Recipes of the test images: hashes are stable and change with what goes in."""

from __future__ import annotations

import dataclasses
import re

from cargohold.testbed.recipes import (
    DATABASES,
    ENTRYPOINT_PATH,
    IMAGE_NAMES,
    MARIADB,
    POSTGRES,
    REDIS,
    BaseRecipe,
    BusyboxRecipe,
    busybox_links,
    short_hash,
)

HEX12 = re.compile(r"^[0-9a-f]{12}$")


def test_short_hash_is_stable_and_ignores_key_order() -> None:
    assert short_hash({"a": 1, "b": [1, 2]}) == short_hash({"b": [1, 2], "a": 1})
    assert short_hash({"a": 1}) != short_hash({"a": 2})
    assert HEX12.match(short_hash("x"))


def test_refs_are_repository_and_recipe_hash() -> None:
    for recipe in DATABASES.values():
        repo, tag = recipe.ref.split(":")
        assert repo == f"cargohold-test/{recipe.name}"
        assert HEX12.match(tag)
    assert IMAGE_NAMES == ("busybox", "postgres", "mariadb", "redis")
    assert len({r.digest for r in DATABASES.values()}) == 3


def test_base_hash_follows_the_package_list_not_its_order() -> None:
    base = BaseRecipe()
    shuffled = dataclasses.replace(base, packages=tuple(reversed(base.packages)))
    assert shuffled.digest == base.digest
    more = dataclasses.replace(base, packages=(*base.packages, "postgresql-contrib"))
    assert more.digest != base.digest
    assert dataclasses.replace(base, suite="trixie").digest != base.digest
    # A changed base changes every derived image.
    assert dataclasses.replace(POSTGRES, base=more).digest != POSTGRES.digest


def test_database_hash_follows_the_entrypoint_text_and_configuration() -> None:
    other_script = dataclasses.replace(POSTGRES, entrypoint_file=REDIS.entrypoint_file)
    assert other_script.digest != POSTGRES.digest
    assert dataclasses.replace(POSTGRES, stop_signal="SIGTERM").digest != POSTGRES.digest
    assert dataclasses.replace(POSTGRES, volumes=("/pg",)).digest != POSTGRES.digest
    assert POSTGRES.digest == dataclasses.replace(POSTGRES).digest


def test_entrypoints_are_shipped_scripts_that_exec_the_server_as_its_user() -> None:
    for recipe, user, server, port_env in (
        (POSTGRES, "postgres", "postgres -D", "POSTGRES_PORT"),
        (MARIADB, "mysql", "mariadbd", "MARIADB_PORT"),
        (REDIS, "redis", "redis-server", "REDIS_PORT"),
    ):
        text = recipe.entrypoint()
        assert text.startswith("#!/bin/sh\n")
        assert f"exec setpriv --reuid={user}" in text
        assert server in text and port_env in text and recipe.port_env == port_env
        assert "127.0.0.1" in text
        assert '"$@"' in text


def test_commit_changes_set_path_volumes_entrypoint_and_label() -> None:
    changes = POSTGRES.changes("abc")
    assert (
        changes[0] == "ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    )
    assert "ENV PGDATA=/var/lib/postgresql/data" in changes
    assert 'VOLUME ["/var/lib/postgresql/data"]' in changes
    assert f'ENTRYPOINT ["{ENTRYPOINT_PATH}"]' in changes
    assert "LABEL cargohold.testbed.recipe=abc" in changes
    assert POSTGRES.commit_config() == {"StopSignal": "SIGINT"}
    assert 'VOLUME ["/var/lib/mysql"]' in MARIADB.changes("x")
    assert 'VOLUME ["/data"]' in REDIS.changes("x")
    assert MARIADB.changes("x")[0] == "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def test_ready_command_follows_the_port_where_it_matters() -> None:
    assert POSTGRES.ready() == ("pg_isready", "-q", "-U", "postgres")
    assert POSTGRES.ready(5433)[-2:] == ("-p", "5433")
    assert MARIADB.ready(3307) == MARIADB.ready()  # over the socket: port does not matter
    assert REDIS.ready(6390) == REDIS.ready()


def test_mmdebstrap_command_line_names_no_mirror() -> None:
    args = BaseRecipe().mmdebstrap_args("/tmp/out.tar")
    assert args[0] == "mmdebstrap"
    assert "--variant=minbase" in args
    include = next(a for a in args if a.startswith("--include="))
    assert set(include.split("=", 1)[1].split(",")) >= {"postgresql-15", "mariadb-server", "redis-server", "sqlite3"}
    assert args[-2:] == ["bookworm", "/tmp/out.tar"]
    assert not any("://" in a for a in args)
    assert any(a.startswith("--dpkgopt=path-exclude=/usr/share/doc") for a in args)


def test_busybox_links_skip_the_binary_and_unsafe_paths() -> None:
    links = busybox_links(("/bin/sh", "bin/busybox", "usr/bin/tar", "bin/sh", "../etc/x", "", "sbin/../x"))
    assert links == [("bin/sh", "/bin/busybox"), ("usr/bin/tar", "/bin/busybox")]


def test_busybox_hash_follows_the_binary_and_applets() -> None:
    one = BusyboxRecipe(binary_sha256="a" * 64, applets=("bin/sh", "bin/ls"))
    assert one.digest == BusyboxRecipe(binary_sha256="a" * 64, applets=("bin/ls", "bin/sh")).digest
    assert one.digest != BusyboxRecipe(binary_sha256="b" * 64, applets=("bin/sh", "bin/ls")).digest
    assert one.digest != BusyboxRecipe(binary_sha256="a" * 64, applets=("bin/sh",)).digest
    assert one.ref == f"cargohold-test/busybox:{one.digest}"
