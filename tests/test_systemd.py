"""The systemd unit and its example config, checked with systemd's own tools.

``systemd-analyze verify`` and ``systemd-analyze security --offline=yes``
read a copy of ``systemd/wr.service`` as the installed systemd would. The
sandbox tests run a real ``wr serve`` under the seccomp filters the unit
asks for (``SystemCallFilter=``, ``MemoryDenyWriteExecute=``,
``RestrictAddressFamilies=``), built with libseccomp the way systemd 252
builds them, and play systemd's side of sd_notify. Mount, user and
capability settings need a real service manager; verify checks their syntax.

systemd-analyze and libseccomp are system packages: a missing one fails the
test under CI (``CI=true``) and skips it elsewhere.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import functools
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.serverproc import free_port, missing, wait_for
from wr.config import load_config

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "wr.service"
EXAMPLE_CONFIG = ROOT / "systemd" / "wr.toml"

# Where the README's installation steps put things.
INSTALLED_WR = "/opt/wr/.venv/bin/wr"
INSTALLED_CONFIG = "/etc/wr/wr.toml"
INSTALLED_STATIC = "/opt/wr/static"

# systemd-analyze security rates 0 (locked down) to 10 (no sandbox at all).
MAX_EXPOSURE = 2.5
# Generous bound for each step of a real server we wait on.
STEP_TIMEOUT_S = 15.0
# systemd asks for a ping every WATCHDOG_USEC / 2: one a second here.
WATCHDOG_USEC = 2_000_000

# libseccomp's constants (seccomp.h).
SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_ACT_ERRNO = 0x00050000
SCMP_CMP_EQ = 4
SCMP_CMP_GE = 5
SCMP_CMP_MASKED_EQ = 7
# Socket families are below this on every Linux (AF_MAX is 46 in 6.x).
FAMILY_LIMIT = 64
PROT_WRITE = 0x2
PROT_EXEC = 0x4
SHM_EXEC = 0o100000


def need_systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        missing("systemd-analyze is not installed (Debian package systemd)")
    return path


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [need_systemd_analyze(), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def service_settings(unit_text: str) -> list[tuple[str, str]]:
    """The ``Key=Value`` lines of ``[Service]`` in order; keys may repeat."""
    settings: list[tuple[str, str]] = []
    section = ""
    for raw in unit_text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]":
            key, _, value = line.partition("=")
            settings.append((key.strip(), value.strip()))
    return settings


def setting(settings: list[tuple[str, str]], key: str) -> str:
    values = [value for name, value in settings if name == key]
    assert values, f"{key}= is not set in {UNIT.name}"
    return values[-1]


def seconds(span: str) -> float:
    """A time span as this unit writes them: whole seconds, like ``15s``."""
    assert re.fullmatch(r"\d+s", span), f"not a span in seconds: {span}"
    return float(span[:-1])


def local_copy(tmp_path: Path) -> Path:
    """The unit, with ExecStart= pointing at this checkout's wr and a config."""
    text = UNIT.read_text(encoding="utf-8")
    installed = f"ExecStart={INSTALLED_WR} serve --config {INSTALLED_CONFIG}\n"
    assert text.count(installed) == 1, f"{UNIT.name} must contain {installed!r}"

    config = tmp_path / "wr.toml"
    shutil.copyfile(EXAMPLE_CONFIG, config)
    wr = Path(sys.executable).parent / "wr"
    copy = tmp_path / UNIT.name
    copy.write_text(
        text.replace(installed, f"ExecStart={wr} serve --config {config}\n"),
        encoding="utf-8",
    )
    return copy


# What systemd-analyze says about the unit


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    copy = local_copy(tmp_path)

    result = analyze("verify", str(copy))

    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert [line for line in output.splitlines() if copy.name in line] == []


def test_unit_exposure_is_at_most_2_5(tmp_path: Path) -> None:
    copy = local_copy(tmp_path)

    result = analyze("security", "--offline=yes", str(copy))

    assert result.returncode == 0, result.stdout + result.stderr
    level = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", result.stdout)
    assert level is not None, result.stdout
    assert float(level.group(1)) <= MAX_EXPOSURE, result.stdout


# The example config, and how it fits the unit


def test_example_config_loads_with_state_in_var_lib_wr() -> None:
    config = load_config(EXAMPLE_CONFIG, env={})

    assert config.state_dir == Path("/var/lib/wr")
    assert config.server.static_dir == INSTALLED_STATIC
    assert list(config.rooms) == ["default"]


def test_unit_agrees_with_example_config() -> None:
    config = load_config(EXAMPLE_CONFIG, env={})
    settings = service_settings(UNIT.read_text(encoding="utf-8"))

    # StateDirectory= is relative to /var/lib for system services.
    state_dir = "/var/lib/" + setting(settings, "StateDirectory")
    assert state_dir == config.server.state_dir
    assert setting(settings, "StateDirectoryMode") == "0700"
    # systemd's SIGKILL must not cut the drain short.
    stop_s = seconds(setting(settings, "TimeoutStopSec"))
    assert stop_s > config.server.shutdown_grace_s
    # Each process of wr has the unit's descriptor limit to itself.
    assert int(setting(settings, "LimitNOFILE")) > config.http.max_connections


# The unit's seccomp filters, rebuilt outside systemd


class _ArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


# A seccomp rule: system call number, action, conditions on its arguments.
Rule = tuple[int, int, tuple[_ArgCmp, ...]]


@functools.cache
def libseccomp() -> ctypes.CDLL:
    name = ctypes.util.find_library("seccomp")
    if name is None:
        missing("libseccomp is not installed (Debian package libseccomp2)")
    lib = ctypes.CDLL(name)
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(_ArgCmp),
    ]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_syscall_resolve_name.restype = ctypes.c_int
    return lib


def syscall_number(name: str) -> int:
    """The native number; negative for calls this architecture lacks."""
    return int(libseccomp().seccomp_syscall_resolve_name(name.encode()))


@functools.cache
def syscall_names(entry: str) -> frozenset[str]:
    """A SystemCallFilter= entry as system call names, groups expanded."""
    if not entry.startswith("@"):
        return frozenset({entry})
    result = analyze("syscall-filter", entry)
    assert result.returncode == 0, result.stderr
    names: set[str] = set()
    # The first line repeats the group's name; comments start with '#'.
    for line in result.stdout.splitlines()[1:]:
        item = line.strip()
        if item and not item.startswith("#"):
            names |= syscall_names(item)
    return frozenset(names)


@dataclass(frozen=True, slots=True)
class Sandbox:
    """The unit's seccomp settings, resolved to numbers before any fork."""

    allowed_syscalls: frozenset[int]
    refusal_errno: int
    deny_write_execute: bool
    address_families: frozenset[int]

    @classmethod
    def of_unit(cls) -> Sandbox:
        settings = service_settings(UNIT.read_text(encoding="utf-8"))
        allowed: set[str] = set()
        denied: set[str] = set()
        for key, value in settings:
            if key == "SystemCallFilter":
                names = denied if value.startswith("~") else allowed
                for entry in value.removeprefix("~").split():
                    names |= syscall_names(entry)
        assert allowed, "the unit is expected to use an allow list"
        numbers = {syscall_number(name) for name in allowed - denied}
        return cls(
            allowed_syscalls=frozenset(n for n in numbers if n >= 0),
            refusal_errno=getattr(errno, setting(settings, "SystemCallErrorNumber")),
            deny_write_execute=setting(settings, "MemoryDenyWriteExecute") == "yes",
            address_families=frozenset(
                getattr(socket, family)
                for family in setting(settings, "RestrictAddressFamilies").split()
            ),
        )

    def enter(self) -> None:
        """Load the filters into this process (run in the child, before exec).

        Two filters, stacked as systemd stacks its own: one answers W+X
        memory with EPERM and other socket families with EAFNOSUPPORT, the
        other refuses calls off the list with SystemCallErrorNumber=.
        libseccomp also sets no_new_privs, as NoNewPrivileges=yes does.
        """
        lib = libseccomp()
        self._load(lib, SCMP_ACT_ALLOW, self._memory_and_socket_rules())
        allow: list[Rule] = [
            (number, SCMP_ACT_ALLOW, ()) for number in self.allowed_syscalls
        ]
        self._load(lib, SCMP_ACT_ERRNO | self.refusal_errno, allow)

    def _memory_and_socket_rules(self) -> list[Rule]:
        eperm = SCMP_ACT_ERRNO | errno.EPERM
        refuse_family = SCMP_ACT_ERRNO | errno.EAFNOSUPPORT
        socket_call = syscall_number("socket")
        rules: list[Rule] = [
            (socket_call, refuse_family, (_ArgCmp(0, SCMP_CMP_EQ, family, 0),))
            for family in range(FAMILY_LIMIT)
            if family not in self.address_families
        ]
        rules.append(
            (socket_call, refuse_family, (_ArgCmp(0, SCMP_CMP_GE, FAMILY_LIMIT, 0),))
        )
        if self.deny_write_execute:
            write_exec = PROT_WRITE | PROT_EXEC
            for name, arg, mask in (
                ("mmap", 2, write_exec),
                ("mprotect", 2, PROT_EXEC),
                ("pkey_mprotect", 2, PROT_EXEC),
                ("shmat", 2, SHM_EXEC),
            ):
                test = _ArgCmp(arg, SCMP_CMP_MASKED_EQ, mask, mask)
                rules.append((syscall_number(name), eperm, (test,)))
        return rules

    @staticmethod
    def _load(
        lib: ctypes.CDLL,
        default: int,
        rules: Sequence[Rule],
    ) -> None:
        context = lib.seccomp_init(default)
        if not context:
            raise OSError("seccomp_init failed")
        try:
            for number, action, tests in rules:
                array = (_ArgCmp * len(tests))(*tests)
                status = lib.seccomp_rule_add_array(
                    context, action, number, len(tests), array
                )
                if status != 0:
                    raise OSError(-status, f"seccomp rule for call {number}")
            status = lib.seccomp_load(context)
            if status != 0:
                raise OSError(-status, "seccomp_load failed")
        finally:
            lib.seccomp_release(context)


def run_python(code: str, sandbox: Sandbox | None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        # The filters must be in place before exec, as under systemd; the
        # test process runs no threads that a fork could catch mid-lock.
        preexec_fn=sandbox.enter if sandbox else None,
    )


# Each probe does what the unit forbids; it succeeds outside the sandbox.
FORBIDDEN = {
    "privileged_call": ("import os; os.setuid(os.getuid())", "PermissionError"),
    "writable_executable_memory": (
        "import mmap; mmap.mmap(-1, 4096, prot=7)",
        "PermissionError",
    ),
    "netlink_socket": (
        "import socket; socket.socket(socket.AF_NETLINK, socket.SOCK_RAW)",
        f"[Errno {errno.EAFNOSUPPORT}]",
    ),
}


@pytest.mark.parametrize("probe", sorted(FORBIDDEN))
def test_sandbox_refuses_what_the_unit_forbids(probe: str) -> None:
    code, error = FORBIDDEN[probe]
    sandbox = Sandbox.of_unit()

    outside = run_python(code, None)
    inside = run_python(code, sandbox)

    assert outside.returncode == 0, outside.stderr
    assert inside.returncode == 1, inside.stderr
    assert error in inside.stderr


class NotifySocket:
    """systemd's end of sd_notify: a datagram socket that keeps every line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.lines: list[str] = []
        self.seen = 0

    def close(self) -> None:
        self.sock.close()

    def expect(self, line: str, timeout_s: float = STEP_TIMEOUT_S) -> None:
        """Wait for ``line`` among the messages after the last one expected."""
        deadline = time.monotonic() + timeout_s
        while line not in self.lines[self.seen :]:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"no {line} within {timeout_s}s; got {self.lines[self.seen :]}"
                )
            self.sock.settimeout(remaining)
            try:
                message = self.sock.recv(4096)
            except TimeoutError:
                continue
            self.lines.extend(message.decode().splitlines())
        self.seen += self.lines[self.seen :].index(line) + 1


def sandboxed_config(tmp_path: Path) -> Path:
    """The example config with the waiting page of this checkout."""
    text = EXAMPLE_CONFIG.read_text(encoding="utf-8")
    installed = f'static_dir = "{INSTALLED_STATIC}"\n'
    assert text.count(installed) == 1
    config = tmp_path / "wr.toml"
    # The example leaves the admin listener on its default port; a test
    # takes a free one, so that nothing else on the machine is in the way.
    assert "[admin]" not in text
    config.write_text(
        text.replace(installed, f'static_dir = "{ROOT / "static"}"\n')
        + f"\n[admin]\nport = {free_port()}\n",
        encoding="utf-8",
    )
    return config


def admitted(client: httpx.Client, queue_token: str) -> dict[str, Any] | None:
    response = client.get(
        "/api/v1/rooms/default/status",
        headers={"Authorization": f"Bearer {queue_token}"},
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body if body["state"] == "admitted" else None


@contextlib.contextmanager
def sandboxed_wr(
    tmp_path: Path,
) -> Iterator[tuple[subprocess.Popen[bytes], httpx.Client, NotifySocket]]:
    """``wr serve`` as the unit starts it: in the filters, told to notify."""
    notify = NotifySocket(tmp_path / "notify")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WR_")}
    env |= {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": str(WATCHDOG_USEC)}
    command = [
        *(str(Path(sys.executable).parent / "wr"), "serve"),
        *("--config", str(sandboxed_config(tmp_path))),
        *("--host", "127.0.0.1", "--port", str(port)),
        *("--state-dir", str(tmp_path / "state")),
    ]
    log_path = tmp_path / "wr.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            # Its own process group, so that a failed test can end the workers.
            start_new_session=True,
            # As in run_python: the filters are loaded before exec.
            preexec_fn=Sandbox.of_unit().enter,  # noqa: PLW1509 (no threads)
        )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5.0) as client:
            yield proc, client, notify
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nwr's log:\n{log_path.read_text()}") from exc
    finally:
        # Workers outlive a supervisor that failed; the group ends them all.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        notify.close()


def test_wr_lives_its_systemd_lifecycle_inside_the_unit_filters(
    tmp_path: Path,
) -> None:
    with sandboxed_wr(tmp_path) as (proc, client, notify):
        # Type=notify: systemd counts wr as started on READY=1.
        notify.expect("READY=1")

        # A person's path: waiting page, join, admission, the gateway's check.
        assert client.get("/").status_code == 200
        joined = client.post("/api/v1/rooms/default/join")
        assert joined.status_code == 200, joined.text
        queue_token = joined.json()["queue_token"]
        status = wait_for(
            lambda: admitted(client, queue_token), STEP_TIMEOUT_S, "admission"
        )
        verified = client.get(
            "/api/v1/verify",
            headers={"Authorization": f"Bearer {status['access_token']}"},
        )
        assert verified.status_code == 204

        # WatchdogSec=: pings keep coming while wr runs.
        notify.expect("WATCHDOG=1")

        # ExecReload= sends SIGHUP; wr reloads and says so.
        proc.send_signal(signal.SIGHUP)
        notify.expect("RELOADING=1")
        notify.expect("READY=1")
        assert client.get("/healthz").status_code == 200

        # KillMode=mixed: SIGTERM to the supervisor alone, which drains.
        proc.send_signal(signal.SIGTERM)
        notify.expect("STOPPING=1")
        assert proc.wait(timeout=STEP_TIMEOUT_S) == 0
