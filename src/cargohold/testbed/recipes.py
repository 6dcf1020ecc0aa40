"""What the test images are made of, as pure values; a recipe's hash is its image tag.

Nothing here talks to an engine or runs a program: :mod:`cargohold.testbed.images`
turns these recipes into images. A tag is the short hash of everything that decides
the content of an image (package list, mmdebstrap options, entrypoint text, image
configuration, :data:`RECIPE_VERSION`), so an image whose tag exists is up to date
and a changed recipe gets a new tag.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from importlib.resources import files

#: Bump when the builder code changes what it produces from the same recipe.
RECIPE_VERSION = 1

#: Repository prefix of every test image; nothing of it is ever pushed anywhere.
REPOSITORY_PREFIX = "cargohold-test"

#: Label on every test image, holding its recipe hash.
RECIPE_LABEL = "cargohold.testbed.recipe"

STANDARD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

#: Where the entrypoint script goes inside a database image.
ENTRYPOINT_PATH = "/usr/local/bin/cargohold-entrypoint"

HASH_LENGTH = 12


def short_hash(payload: object) -> str:
    """A stable short hex digest of a JSON-able value (key order does not matter)."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()[:HASH_LENGTH]


def image_repository(name: str) -> str:
    return f"{REPOSITORY_PREFIX}/{name}"


# --- busybox ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BusyboxRecipe:
    """A scratch image holding one static busybox and a symlink per applet."""

    #: sha256 of the busybox binary that goes in.
    binary_sha256: str
    #: Applet paths relative to the root, as ``busybox --list-full`` prints them.
    applets: tuple[str, ...]
    name: str = "busybox"

    @property
    def repository(self) -> str:
        return image_repository(self.name)

    @property
    def digest(self) -> str:
        return short_hash(
            {
                "kind": "busybox",
                "version": RECIPE_VERSION,
                "binary": self.binary_sha256,
                "applets": sorted(self.applets),
                "changes": self.changes(""),
            }
        )

    @property
    def ref(self) -> str:
        return f"{self.repository}:{self.digest}"

    def changes(self, digest: str) -> list[str]:
        """Dockerfile instructions for ``docker import`` (digest goes in the label)."""
        return [f"ENV PATH={STANDARD_PATH}", 'CMD ["sh"]', f"LABEL {RECIPE_LABEL}={digest}"]


def busybox_links(applets: tuple[str, ...]) -> list[tuple[str, str]]:
    """(path, symlink target) for each applet, relative to the root, ``bin/busybox`` excluded.

    Targets are absolute (``/bin/busybox``) so they resolve from any directory.
    """
    links: dict[str, str] = {}
    for raw in applets:
        path = raw.strip().lstrip("/")
        if not path or path == "bin/busybox" or ".." in path.split("/"):
            continue
        links[path] = "/bin/busybox"
    return sorted(links.items())


# --- the database base image --------------------------------------------------------------

_DEFAULT_PACKAGES = (
    "postgresql-15",
    "postgresql-client-15",
    "mariadb-server",
    "mariadb-client",
    "redis-server",
    "redis-tools",
    "sqlite3",
)

# Docs, manuals, translations, and PostgreSQL's optional LLVM JIT (~130 MB: libLLVM and z3,
# only pulled in for JIT) are left out of the image.
_DEFAULT_DPKG_OPTIONS = (
    "path-exclude=/usr/share/doc/*",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/lintian/*",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
    "path-exclude=/usr/lib/postgresql/15/lib/llvmjit*",
    "path-exclude=/usr/lib/postgresql/15/lib/bitcode/*",
    "path-exclude=/usr/lib/*/libLLVM-*",
    "path-exclude=/usr/lib/*/libz3.so*",
)

# The packages' own post-install steps create a "main" PostgreSQL cluster and a MariaDB data
# dir; the images initialise their volumes themselves, so these go (an image's files under
# a VOLUME path would be copied into every new named volume).
_DEFAULT_HOOKS = (
    'rm -rf "$1"/var/lib/postgresql/15 "$1"/etc/postgresql/15',
    'find "$1"/var/lib/mysql -mindepth 1 -delete',
    'mkdir -p "$1"/data "$1"/var/lib/postgresql/data',
)


@dataclass(frozen=True, slots=True)
class BaseRecipe:
    """One Debian root file system holding every test database, built by mmdebstrap."""

    suite: str = "bookworm"
    variant: str = "minbase"
    packages: tuple[str, ...] = _DEFAULT_PACKAGES
    dpkg_options: tuple[str, ...] = _DEFAULT_DPKG_OPTIONS
    customize_hooks: tuple[str, ...] = _DEFAULT_HOOKS
    name: str = "db-base"

    @property
    def repository(self) -> str:
        return image_repository(self.name)

    @property
    def digest(self) -> str:
        return short_hash(
            {
                "kind": "mmdebstrap",
                "version": RECIPE_VERSION,
                "suite": self.suite,
                "variant": self.variant,
                "packages": sorted(self.packages),
                "dpkg": list(self.dpkg_options),
                "hooks": list(self.customize_hooks),
                "changes": self.changes(""),
            }
        )

    @property
    def ref(self) -> str:
        return f"{self.repository}:{self.digest}"

    def mmdebstrap_args(self, output: str) -> list[str]:
        """The command line that writes the root file system as a tar to ``output``.

        No mirror is given: mmdebstrap uses its default / the machine's apt configuration.
        """
        args = ["mmdebstrap", f"--variant={self.variant}", "--include=" + ",".join(self.packages)]
        args += [f"--dpkgopt={opt}" for opt in self.dpkg_options]
        args += [f"--customize-hook={hook}" for hook in self.customize_hooks]
        args += [self.suite, output]
        return args

    def changes(self, digest: str) -> list[str]:
        return [f"ENV PATH={STANDARD_PATH}", f"LABEL {RECIPE_LABEL}={digest}"]


# --- the database images ------------------------------------------------------------------


def entrypoint_text(filename: str) -> str:
    """The text of an entrypoint script shipped in ``cargohold/testbed/files``."""
    return files("cargohold.testbed").joinpath("files", filename).read_text(encoding="utf-8")


@dataclass(frozen=True, slots=True)
class DatabaseRecipe:
    """A database image derived from the base: its entrypoint script and configuration."""

    name: str
    entrypoint_file: str
    #: Extra image environment (PATH is always set).
    env: tuple[tuple[str, str], ...] = ()
    volumes: tuple[str, ...] = ()
    stop_signal: str = "SIGTERM"
    extra_path: str = ""
    #: A command, run with ``docker exec``, that exits 0 once the server takes queries.
    ready_command: tuple[str, ...] = ()
    #: The option of ``ready_command`` that names the port, when the port matters to it.
    ready_port_option: str = ""
    #: The environment variable that sets the server's port.
    port_env: str = ""
    default_port: int = 0
    base: BaseRecipe = field(default_factory=BaseRecipe)

    @property
    def repository(self) -> str:
        return image_repository(self.name)

    def entrypoint(self) -> str:
        return entrypoint_text(self.entrypoint_file)

    @property
    def digest(self) -> str:
        return short_hash(
            {
                "kind": "database",
                "version": RECIPE_VERSION,
                "base": self.base.digest,
                "entrypoint": self.entrypoint(),
                "changes": self.changes(""),
                "config": self.commit_config(),
            }
        )

    @property
    def ref(self) -> str:
        return f"{self.repository}:{self.digest}"

    def commit_config(self) -> dict[str, str]:
        """Image settings ``docker commit`` takes only as configuration (not as changes)."""
        return {"StopSignal": self.stop_signal}

    def ready(self, port: int | None = None) -> tuple[str, ...]:
        """The readiness command for a server listening on ``port`` (default port if None)."""
        if port is None or not self.ready_port_option:
            return self.ready_command
        return (*self.ready_command, self.ready_port_option, str(port))

    def changes(self, digest: str) -> list[str]:
        """Dockerfile instructions given to ``docker commit``."""
        path = f"{self.extra_path}:{STANDARD_PATH}" if self.extra_path else STANDARD_PATH
        out = [f"ENV PATH={path}"]
        out += [f"ENV {key}={value}" for key, value in self.env]
        out += [f"VOLUME {json.dumps(list(self.volumes))}"] if self.volumes else []
        out += [
            f"ENTRYPOINT {json.dumps([ENTRYPOINT_PATH])}",
            "CMD []",
            "WORKDIR /",
            f"LABEL {RECIPE_LABEL}={digest}",
        ]
        return out


POSTGRES = DatabaseRecipe(
    name="postgres",
    entrypoint_file="postgres-entrypoint.sh",
    env=(("PGDATA", "/var/lib/postgresql/data"),),
    volumes=("/var/lib/postgresql/data",),
    # Like the official image: SIGINT is PostgreSQL's "fast shutdown".
    stop_signal="SIGINT",
    extra_path="/usr/lib/postgresql/15/bin",
    ready_command=("pg_isready", "-q", "-U", "postgres"),
    ready_port_option="-p",
    port_env="POSTGRES_PORT",
    default_port=5432,
)

MARIADB = DatabaseRecipe(
    name="mariadb",
    entrypoint_file="mariadb-entrypoint.sh",
    volumes=("/var/lib/mysql",),
    ready_command=("mariadb", "-uroot", "--connect-timeout=2", "-e", "SELECT 1"),
    port_env="MARIADB_PORT",
    default_port=3306,
)

REDIS = DatabaseRecipe(
    name="redis",
    entrypoint_file="redis-entrypoint.sh",
    volumes=("/data",),
    ready_command=("redis-cli", "-s", "/run/redis/redis-server.sock", "ping"),
    port_env="REDIS_PORT",
    default_port=6379,
)

DATABASES: dict[str, DatabaseRecipe] = {r.name: r for r in (POSTGRES, MARIADB, REDIS)}

#: Every image the test bed can build, in build order.
IMAGE_NAMES: tuple[str, ...] = ("busybox", *DATABASES)
