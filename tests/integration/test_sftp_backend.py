"""The SFTP backend on a real OpenSSH sshd (the test bed's, ``sshd_server``): what only it
promises — strict host keys, the ssh config, ProxyJump, a lost or stalled connection, the
leftovers of a killed writer — and the issue's acceptance run through the CLI.

No test reads the user's own ~/.ssh or agent: each writes its own ssh config (in a HOME of
its own for the CLI) and passes it in.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cargohold.backends import leftovers_of, open_backend
from cargohold.backends._ssh import HostKeyError, LoginRefused, SSHEnv
from cargohold.backends.sftp import SFTPBackend
from cargohold.cli import exit_codes
from cargohold.errors import BackendIOError, ObjectExists
from cargohold.testbed._system import apt_install
from cargohold.testbed.rgw import RgwServer
from cargohold.testbed.sshd import Sshd, start_sshd, stop_sshd, temp_base


@pytest.fixture
def folder(sshd_server: Sshd) -> Iterator[Path]:
    """A folder on the server of this test only, removed afterwards."""
    path = sshd_server.data / f"it-{uuid.uuid4().hex[:12]}"
    yield path
    subprocess.run(["rm", "-rf", str(path)], check=False)


def config_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / f"ssh_config-{uuid.uuid4().hex[:6]}"
    path.write_text(text)
    return path


def backend(url_path: Path | str, config: Path, alias: str = "it-sftp", options: str = "") -> SFTPBackend:
    b = open_backend(f"sftp://{alias}{url_path}?ssh_config={config}{options}")
    assert isinstance(b, SFTPBackend)
    return b


def server_fingerprint(sshd: Sshd) -> str:
    blob = base64.b64decode(sshd.host_public_key.read_text().split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def cli(*args: str, home: Path, repo: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CARGOHOLD_", "SSH_"))}
    env.update({"HOME": str(home), "CARGOHOLD_REPO": repo, "CARGOHOLD_PASSWORD": "pw", "CARGOHOLD_KDF": "fast"})
    proc = subprocess.run(
        [sys.executable, "-m", "cargohold.cli.app", *args],
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=300,
    )
    if ok:
        assert proc.returncode == 0, (args, proc.returncode, proc.stdout, proc.stderr)
    return proc


def user_home(tmp_path: Path, sshd: Sshd, alias: str = "backuphost", known_hosts: Path | None = None) -> Path:
    """A HOME whose ~/.ssh/config names the test server ``alias`` (IdentityFile, Port, User,
    UserKnownHostsFile set there, as the issue's acceptance has it)."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True, exist_ok=True)
    (home / ".ssh" / "config").write_text(sshd.ssh_config(alias, known_hosts=known_hosts))
    return home


# --- host keys ---------------------------------------------------------------------------------


def test_unknown_host_key_is_refused_with_its_fingerprint(sshd_server: Sshd, tmp_path: Path, folder: Path) -> None:
    known = tmp_path / "known_hosts"
    known.write_text("")
    config = config_file(tmp_path, sshd_server.ssh_config("it-sftp", known_hosts=known))
    b = backend(folder, config)
    with pytest.raises(HostKeyError) as err:
        b.store("config", b"x")
    b.close()
    fp = server_fingerprint(sshd_server)
    assert err.value.fingerprint == fp and err.value.key_type == "ssh-ed25519" and not err.value.transient
    assert f"ssh-keyscan -p {sshd_server.port} -t ed25519 127.0.0.1 >> {known}" in str(err.value)
    assert known.read_text() == "" and not folder.exists()  # nothing accepted, nothing written

    # through the CLI: one line, exit 12 (storage backend), the fingerprint and the fix in it
    home = user_home(tmp_path, sshd_server, known_hosts=known)
    proc = cli("init", home=home, repo=f"sftp://backuphost{folder}/repo", ok=False)
    assert proc.returncode == exit_codes.STORAGE, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cargohold: error: the host key of"), proc.stderr
    assert fp in lines[0] and "ssh-keyscan" in lines[0] and "`ssh backuphost` once" in lines[0]
    assert "Traceback" not in proc.stderr

    # accepted the way the message says: it works
    keyscan = subprocess.run(
        ["ssh-keyscan", "-p", str(sshd_server.port), "-t", "ed25519", "127.0.0.1"], capture_output=True, text=True
    )
    known.write_text(keyscan.stdout)
    cli("init", home=home, repo=f"sftp://backuphost{folder}/repo")


def test_changed_host_key_is_refused(sshd_server: Sshd, tmp_path: Path, folder: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "impostor")], check=True)
    impostor = " ".join((tmp_path / "impostor.pub").read_text().split()[:2])
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{sshd_server.port} {impostor}\n")
    config = config_file(tmp_path, sshd_server.ssh_config("it-sftp", known_hosts=known))
    b = backend(folder, config)
    with pytest.raises(HostKeyError) as err:
        list(b.list())
    b.close()
    assert "CHANGED" in str(err.value) and server_fingerprint(sshd_server) in str(err.value)
    assert f"ssh-keygen -R '[127.0.0.1]:{sshd_server.port}' -f {known}" in str(err.value)
    assert known.read_text().count("\n") == 1


# --- the ssh config ----------------------------------------------------------------------------


def test_host_alias_of_the_home_ssh_config(sshd_server: Sshd, tmp_path: Path, folder: Path) -> None:
    home = user_home(tmp_path, sshd_server, alias="backuphost")
    env = SSHEnv.from_environ({"HOME": str(home)})  # ~/.ssh/config of that HOME, no agent
    b = SFTPBackend(f"sftp://backuphost{folder}", env=env)
    b.store("data/ab/abc", b"through the alias")
    assert b.load("data/ab/abc") == b"through the alias"
    assert (folder / "data" / "ab" / "abc").read_bytes() == b"through the alias"
    b.close()
    # A user in the URL wins over the config's User: a user the server does not know is refused
    nobody = SFTPBackend(f"sftp://nobody@backuphost{folder}", env=env)
    with pytest.raises(LoginRefused) as err:
        nobody.stat("data/ab/abc")
    nobody.close()
    assert "nobody" in str(err.value) and str(sshd_server.client_key) in str(err.value)
    assert not err.value.transient


def test_login_with_a_key_the_server_does_not_know_is_refused(sshd_server: Sshd, tmp_path: Path, folder: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "stranger")], check=True)
    config = config_file(tmp_path, sshd_server.ssh_config("it-sftp", key=tmp_path / "stranger"))
    b = backend(folder, config)
    with pytest.raises(LoginRefused) as err:
        b.load("config")
    b.close()
    assert f"tried {tmp_path / 'stranger'}" in str(err.value) and "authorized_keys" in str(err.value)


def test_proxy_jump_through_a_jump_host(sshd_server: Sshd, tmp_path: Path, folder: Path) -> None:
    # the test server is its own jump host: the target is reached through a direct-tcpip channel
    text = sshd_server.ssh_config("jumphost") + sshd_server.ssh_config("behind") + "    ProxyJump jumphost\n"
    b = backend(folder, config_file(tmp_path, text), alias="behind")
    b.store("k", b"via the jump host")
    assert b.load("k") == b"via the jump host"
    b.close()
    # the route does go through the jump host: with the jump host unreachable, so is the target
    broken = text.replace(f"Port {sshd_server.port}", "Port 1", 1)
    assert broken.index("Port 1") < broken.index("Host behind")
    b = backend(folder, config_file(tmp_path, broken), alias="behind", options="&timeout=3")
    with pytest.raises(BackendIOError) as err:
        b.load("k")
    b.close()
    assert "jumphost (127.0.0.1):1: connection refused" in str(err.value) and err.value.transient


def test_proxy_command(sshd_server: Sshd, tmp_path: Path, folder: Path) -> None:
    # OpenSSH's own client carries the connection (ssh -W), told not to read any user file
    hop = (
        f"ssh -F /dev/null -i {sshd_server.client_key} -o IdentitiesOnly=yes -o BatchMode=yes "
        f"-o UserKnownHostsFile={sshd_server.known_hosts} -o StrictHostKeyChecking=yes "
        f"-p {sshd_server.port} {sshd_server.user}@127.0.0.1 -W %h:%p"
    )
    config = config_file(tmp_path, sshd_server.ssh_config("it-sftp") + f"    ProxyCommand {hop}\n")
    b = backend(folder, config)
    b.store("k", b"via a proxy command")
    assert b.load("k") == b"via a proxy command"
    b.close()


def test_the_agent_given_and_a_passphrase_key(sshd_server: Sshd, tmp_path: Path, folder: Path) -> None:
    """Keys come from the agent socket the caller names (never the process's own
    $SSH_AUTH_SOCK); a key with a passphrase is used through it and named when it cannot be."""
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "secret phrase", "-f", str(key)], check=True)
    authorized = sshd_server.base / "authorized_keys"
    before = authorized.read_text()
    authorized.write_text(before + Path(f"{key}.pub").read_text())
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "config").write_text(
        f"Host agent-test\n    HostName 127.0.0.1\n    Port {sshd_server.port}\n    User {sshd_server.user}\n"
        f"    IdentityFile {key}\n    UserKnownHostsFile {sshd_server.known_hosts}\n"
    )
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        # without an agent: the key cannot be used, and the error says why
        b = SFTPBackend(f"sftp://agent-test{folder}", env=SSHEnv.from_environ({"HOME": str(home)}))
        with pytest.raises(LoginRefused) as err:
            b.load("x")
        b.close()
        assert "passphrase-protected (add it to ssh-agent)" in str(err.value)
        # with the agent holding it
        add = subprocess.run(
            ["ssh-add", str(key)],
            env={
                "SSH_AUTH_SOCK": str(sock),
                "SSH_ASKPASS": str(_askpass(tmp_path)),
                "SSH_ASKPASS_REQUIRE": "force",
                "DISPLAY": "none",
                "PATH": os.environ.get("PATH", ""),
            },
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
        )
        assert add.returncode == 0, add.stderr
        env = SSHEnv.from_environ({"HOME": str(home), "SSH_AUTH_SOCK": str(sock)})
        b = SFTPBackend(f"sftp://agent-test{folder}", env=env)
        b.store("x", b"through the agent")
        assert b.load("x") == b"through the agent"
        b.close()
    finally:
        agent.terminate()
        agent.wait()
        authorized.write_text(before)


def _askpass(tmp_path: Path) -> Path:
    script = tmp_path / "askpass"
    script.write_text("#!/bin/sh\necho 'secret phrase'\n")
    script.chmod(0o700)
    return script


def test_a_server_without_sftp_is_a_clear_error(tmp_path: Path, folder: Path) -> None:
    base = temp_base()  # a killed run's server is stopped by the next (sweep_orphans)
    server = start_sshd(base, sftp=False)
    try:
        config = config_file(tmp_path, server.ssh_config("it-sftp"))
        b = backend("/srv/repo", config)
        with pytest.raises(BackendIOError) as err:
            b.load("config")
        b.close()
        assert "offers no SFTP service" in str(err.value) and not err.value.transient
    finally:
        stop_sshd(base)


def _strace_installed() -> str:
    path = shutil.which("strace")
    if path is None:
        apt_install(["strace"], why="the SFTP durability test watches the server's system calls")
        path = shutil.which("strace")
    assert path is not None
    return path


def _events(strace_out: str, folder: Path) -> list[str]:
    """The traced calls on files under ``folder`` as "call path [path]" (relative; temporary
    files as "tmp"), and "fsync <what that fd was opened on>"."""

    def rel(path: str) -> str:
        short = path.replace(f"{folder}/", "")
        return "tmp" if "~tmp~" in short else short

    fd_of: dict[str, str] = {}
    events: list[str] = []
    for line in strace_out.splitlines():
        line = line.split(maxsplit=1)[1] if " " in line else line  # strace pads a short pid with spaces
        fsync = re.match(r"fsync\((\d+)\)\s+= 0", line)
        if fsync:
            events.append(f"fsync {fd_of.get(fsync.group(1), '?')}")
            continue
        call = re.match(r'(\w+)\((?:AT_FDCWD, )?"([^"]+)"(?:, (?:AT_FDCWD, )?"([^"]+)")?.*\)\s+= (\d+)', line)
        if call is None:
            continue
        name, first, second, result = call.groups()
        if name == "openat":
            fd_of[result] = rel(first)
            events.append(f"open {rel(first)}")
        else:
            events.append(f"{name} {rel(first)} {rel(second) if second else ''}".strip())
    return events


def test_writes_are_durable_and_atomic_on_the_server(sshd_server: Sshd, tmp_path: Path, folder: Path) -> None:
    """What the server does, seen by strace: store = an O_EXCL temporary file, fsync, rename
    over the name, fsync of the folder; create = the same file published by link(2), which
    fails on a taken name; a new folder's parent is fsync'd."""
    config = config_file(tmp_path, sshd_server.ssh_config("it-sftp"))
    out = tmp_path / "strace.out"
    # Only the listener is attached (-f follows the sessions it forks from then on): a list of
    # other tests' sessions may name one that ends meanwhile, and strace then traces nothing.
    calls = "openat,fsync,rename,renameat,renameat2,link,linkat,unlink,unlinkat,mkdir,mkdirat"
    tracer = subprocess.Popen(
        [_strace_installed(), "-f", "-p", str(sshd_server.pid), "-e", f"trace={calls}", "-o", str(out)],
        stderr=subprocess.DEVNULL,
    )
    b = backend(folder, config)
    try:
        deadline = time.monotonic() + 30  # attached once a probe's calls show up (slow under load)
        traced = False
        while not traced and time.monotonic() < deadline:
            time.sleep(0.2)
            b.store("probe", b"p")
            traced = out.exists() and f"{folder}/probe" in out.read_text(errors="replace")
            if not traced:
                b.close()  # its session may have started before strace attached: a new one
                b = backend(folder, config)
        assert traced, f"strace saw none of the server's calls in 30 s (strace exit {tracer.poll()})"
        b.store("data/ab/obj", b"x" * 300_000)
        b.create("locks/mine", b"lock")
        time.sleep(0.3)
    finally:
        tracer.terminate()
        tracer.wait()
        b.close()
    trace = out.read_text()
    events = _events(trace, folder)
    probed = [i for i, e in enumerate(events) if e == "rename tmp probe"]
    if probed:  # what the probes did, and the root folder's fsync after the last one, is not the test
        events = events[probed[-1] + 1 :]
        while events and events[0] in (f"open {folder}", f"fsync {folder}"):
            events = events[1:]
    for step in ("open tmp", "fsync tmp", "rename tmp data/ab/obj", "open data/ab", "fsync data/ab"):
        assert step in events, (step, events)
    assert events.index("fsync tmp") < events.index("rename tmp data/ab/obj") < events.index("fsync data/ab"), events
    # each new folder's parent is fsync'd after the folder is made: data/ab in data, data in the root
    assert events.index("mkdir data") < events.index(f"fsync {folder}") < events.index("mkdir data/ab"), events
    assert events.index("mkdir data/ab") < events.index("fsync data") < events.index("open tmp"), events
    link = events.index("link tmp locks/mine")
    synced = events.index("fsync tmp", events.index("rename tmp data/ab/obj"))
    assert synced < link < events.index("fsync locks"), events
    assert "unlink tmp" in events[link:], events
    assert not any(e.startswith("rename") and "locks/mine" in e for e in events), events  # never over a lock


def test_connections_bound_the_pool_and_close_releases_them(sshd_server: Sshd, tmp_path: Path, folder: Path) -> None:
    b = backend(folder, config_file(tmp_path, sshd_server.ssh_config("it-sftp")), options="&connections=2")
    assert b.connections == 2
    before = set(sshd_server.session_pids())
    logins = sshd_server.log_file.read_text().count("Accepted publickey")
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for j in range(5):
                b.store(f"data/{i:02d}/{j}", os.urandom(200_000))
                b.load(f"data/{i:02d}/{j}")
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sshd_server.log_file.read_text().count("Accepted publickey") - logins == 2  # 8 threads, 2 connections
    sessions = set(sshd_server.session_pids()) - before
    assert sessions
    b.close()
    deadline = time.monotonic() + 10
    while set(sshd_server.session_pids()) & sessions and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not set(sshd_server.session_pids()) & sessions  # the server saw the connections end
    assert len(list(b.list("data/"))) == 40  # and a closed backend opens a new one when used again
    b.close()


# --- faults --------------------------------------------------------------------------------------


def _sessions_of(sshd: Sshd, before: set[int]) -> list[int]:
    return [p for p in sshd.session_pids() if p not in before]


def test_dropped_connection_is_transient_and_the_next_call_reconnects(
    sshd_server: Sshd, tmp_path: Path, folder: Path
) -> None:
    before = set(sshd_server.session_pids())
    config = config_file(tmp_path, sshd_server.ssh_config("it-sftp"))
    b = backend(folder, config, options="&connections=1")
    data = os.urandom(32 * 1024 * 1024)
    b.store("big", data)
    errors: list[BaseException] = []
    done = threading.Event()

    def reader() -> None:
        while not done.is_set():
            try:
                b.load("big")
            except BackendIOError as err:
                errors.append(err)
                return

    t = threading.Thread(target=reader)
    t.start()
    deadline = time.monotonic() + 30
    while not errors and time.monotonic() < deadline:  # the session's sshd processes die mid-transfer
        time.sleep(0.3)
        for pid in _sessions_of(sshd_server, before):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    done.set()
    t.join(timeout=60)
    assert not t.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], BackendIOError), errors
    assert errors[0].transient, errors[0]
    assert "a retry reconnects" in str(errors[0])
    assert b.load("big") == data  # the next call opens a new connection
    b.close()


def test_a_stalled_server_times_out(sshd_server: Sshd, tmp_path: Path, folder: Path) -> None:
    before = set(sshd_server.session_pids())
    config = config_file(tmp_path, sshd_server.ssh_config("it-sftp"))
    b = backend(folder, config, options="&connections=1&timeout=2")
    b.store("obj", b"x" * 100_000)
    stalled = _sessions_of(sshd_server, before)
    assert stalled
    for pid in stalled:
        os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(BackendIOError) as err:
            b.load("obj")
        took = time.monotonic() - started
    finally:
        for pid in stalled:
            os.kill(pid, signal.SIGCONT)
            os.kill(pid, signal.SIGKILL)
    assert err.value.transient and 1.5 < took < 10, (took, err.value)
    assert b.load("obj") == b"x" * 100_000
    b.close()


def _race(contenders: list[SFTPBackend], name: str) -> tuple[list[int], list[int]]:
    barrier = threading.Barrier(len(contenders))
    won: list[int] = []
    lost: list[int] = []

    def contend(i: int) -> None:
        barrier.wait()
        try:
            contenders[i].create(name, f"contender {i}".encode() * 5000)
        except ObjectExists:
            lost.append(i)
        else:
            won.append(i)

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(len(contenders))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return won, lost


def test_create_race_between_connections_has_one_winner(sshd_server: Sshd, tmp_path: Path, folder: Path) -> None:
    config = config_file(tmp_path, sshd_server.ssh_config("it-sftp"))
    contenders = [backend(folder, config, options="&connections=1") for _ in range(6)]
    for c in contenders:
        list(c.list("locks/"))  # connect first, so the race is the create
    for round_ in range(4):
        name = f"locks/race{round_}"
        won, lost = _race(contenders, name)
        assert len(won) == 1 and len(lost) == len(contenders) - 1, (won, lost)
        assert contenders[0].load(name) == f"contender {won[0]}".encode() * 5000
    # a loser's temporary file is removed by a request it does not wait for: gone moments later
    deadline = time.monotonic() + 10
    while leftovers_of(contenders[0]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert leftovers_of(contenders[0]) == []
    for c in contenders:
        c.close()


_WRITER = """
import sys
from cargohold.backends import open_backend
b = open_backend(sys.argv[1])
b.store("data/00/interrupted", bytes(128 * 1024 * 1024))
"""


def test_a_killed_writer_leaves_a_leftover_that_prune_removes(sshd_server: Sshd, tmp_path: Path, folder: Path) -> None:
    home = user_home(tmp_path, sshd_server)
    repo = f"sftp://backuphost{folder}/repo"
    cli("init", home=home, repo=repo)
    env = {**os.environ, "HOME": str(home)}
    env.pop("SSH_AUTH_SOCK", None)
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, repo], env=env)
    deadline = time.monotonic() + 30
    temp: list[Path] = []
    while not temp and time.monotonic() < deadline and writer.poll() is None:
        temp = [p for p in (folder / "repo" / "data" / "00").glob("*~tmp~*") if p.stat().st_size > 0]
        time.sleep(0.01)
    writer.kill()
    writer.wait()
    assert temp, "the writer wrote no temporary file"
    assert not (folder / "repo" / "data" / "00" / "interrupted").exists()

    b = SFTPBackend(repo, env=SSHEnv.from_environ({"HOME": str(home)}))
    left = leftovers_of(b)
    assert [lo.name for lo in left] == [f"data/00/{temp[0].name}"]
    assert left[0].writer is not None and left[0].writer.pid == writer.pid
    assert [i.name for i in b.list("data/")] == []  # a temporary file is no object

    check = json.loads(cli("check", "--json", home=home, repo=repo).stdout)
    assert check["leftovers"]["count"] == 1 and check["leftovers"]["removable"] == 1, check["leftovers"]
    cli("prune", home=home, repo=repo)
    assert leftovers_of(b) == [] and not temp[0].exists()
    b.close()


# --- the acceptance for SFTP, run through the CLI -----------------------------------------


def test_acceptance_init_backup_restore_check_over_sftp(sshd_server: Sshd, tmp_path: Path, folder: Path) -> None:
    home = user_home(tmp_path, sshd_server, alias="backuphost")
    data = tmp_path / "DATA"
    (data / "sub" / "deeper").mkdir(parents=True)
    (data / "a.txt").write_text("alpha\n")
    (data / "sub" / "big.bin").write_bytes(os.urandom(6 * 1024 * 1024))
    (data / "sub" / "deeper" / "zeros").write_bytes(bytes(3 * 1024 * 1024))
    os.symlink("a.txt", data / "link")
    repo = f"sftp://backuphost{folder}/repo"
    cli("init", home=home, repo=repo)
    cli("backup", "--path", str(data), home=home, repo=repo)
    out = tmp_path / "OUT2"
    cli("restore", "latest", "--target", str(out), home=home, repo=repo)
    diff = subprocess.run(["diff", "-r", "--no-dereference", str(data), str(out)], capture_output=True, text=True)
    assert diff.returncode == 0, diff.stdout + diff.stderr
    proc = cli("check", "--read-data", home=home, repo=repo)
    assert "no errors" in proc.stdout
    # the repository is where the URL says, on the server
    assert (folder / "repo" / "config").is_file() and any((folder / "repo" / "data").iterdir())


def test_the_whole_acceptance_as_written_s3_then_sftp_then_a_copy(
    sshd_server: Sshd, s3_env: RgwServer, tmp_path: Path, folder: Path
) -> None:
    """Issue 10's acceptance script, one shell, as a new user types it: S3 from the standard
    AWS variables, SFTP through a Host alias, both made by plain `init` (so the copy from S3
    into SFTP is a translated one), `check --read-data` clean on the target."""
    home = user_home(tmp_path, sshd_server, alias="backuphost")
    data = tmp_path / "DATA"
    (data / "sub").mkdir(parents=True)
    (data / "a.txt").write_text("alpha\n")
    (data / "sub" / "big.bin").write_bytes(os.urandom(9 * 1024 * 1024))
    os.symlink("a.txt", data / "link")
    bucket = f"ch-acc-{uuid.uuid4().hex[:10]}"
    script = f"""
        set -e
        export CARGOHOLD_REPO=s3://{bucket}/repo CARGOHOLD_PASSWORD=acceptance-pw
        cargohold init && cargohold backup --path DATA && cargohold restore latest --target OUT
        diff -r --no-dereference DATA OUT
        cargohold check --read-data
        export CARGOHOLD_REPO=sftp://backuphost{folder}/repo
        cargohold init && cargohold backup --path DATA && cargohold restore latest --target OUT2
        diff -r --no-dereference DATA OUT2
        cargohold copy-snapshots --from s3://{bucket}/repo && cargohold check --read-data
        cargohold copy-snapshots --from s3://{bucket}/repo
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CARGOHOLD_", "SSH_", "AWS_"))}
    env.update(s3_env.env())
    env.update(
        {
            "HOME": str(home),
            "CARGOHOLD_KDF": "fast",
            "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
            "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        }
    )
    try:
        proc = subprocess.run(
            ["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
        )
        assert proc.returncode == 0, (proc.stdout, proc.stderr)
        assert f"created bucket '{bucket}'" in proc.stdout
        assert "1 snapshot(s) copied" in proc.stdout and "0 snapshot(s) copied, 1 already here" in proc.stdout
        assert proc.stdout.count("no errors") == 2
        assert "do not share blob ids" in proc.stderr and "Traceback" not in proc.stderr
        assert len(list((folder / "repo" / "snapshots").iterdir())) == 2  # its own backup and the copy
    finally:
        with contextlib.suppress(Exception):
            s3_env.remove_bucket(bucket)
