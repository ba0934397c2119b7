"""Two "hosts" on one machine, each reaching one Redis over a link of its own that a test can cut.

Where this process may create network namespaces (root, `ip netns add`), a host is a network
namespace joined to this one by a veth pair with its own addresses (10.231.N.1 here, .2 there);
cutting its link sets our end of the pair down: a real black hole (no FIN, no RST, SYNs dropped),
the other host untouched. Elsewhere a host is a loopback address of its own (127.0.0.2, .3:
Linux routes all of 127/8 to lo) with a `ChaosProxy` bound on it, and the cut is the proxy's
black hole mode.

A host's processes enter it at interpreter start: `Host.env()` puts a one-line sitecustomize on
PYTHONPATH that calls `enter_from_env()`, which joins the namespace (setns), gives the process
a UTS namespace with the host's own hostname (so taskd's default worker id
`<hostname>:<machine tag>:<pid>` names the host, as on a real machine), when the host has a
`machine_id` of its own, a private mount namespace in which a file holding it is bind-mounted
over /etc/machine-id (two machines with one hostname: cloned VMs that were given new machine
ids), and, when asked, shifts `time.time()` by a fixed offset (a host whose wall clock is
minutes off; the monotonic clock, like a real one, is untouched).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from tools.chaos_proxy.base import BLACKHOLE, PASS
from tools.chaos_proxy.proxy import ChaosProxy

NETNS_ENV = "MULTIHOST_NETNS"  # /run/netns/<name> to join
HOSTNAME_ENV = "MULTIHOST_HOSTNAME"  # the hostname the host's processes see
OFFSET_ENV = "MULTIHOST_WALL_OFFSET"  # seconds added to time.time()
MACHINE_ID_ENV = "MULTIHOST_MACHINE_ID"  # a file to bind-mount over /etc/machine-id
MACHINE_ID = "/etc/machine-id"
LOOPBACK_ENV = "MULTIHOST_LOOPBACK"  # "1": loopback hosts even where namespaces are allowed
# a container's PID namespace: its first process (the command) is pid 1, as under `docker run`
PID_NAMESPACE = ("unshare", "--pid", "--fork", "--kill-child", "--mount-proc")
_CLONE_NEWNET = 0x40000000
_CLONE_NEWUTS = 0x04000000
_CLONE_NEWNS = 0x00020000
_MS_BIND, _MS_REC, _MS_PRIVATE = 0x1000, 0x4000, 0x40000
_SHIM = "from tools.harness.hosts import enter_from_env\nenter_from_env()\n"


def enter_from_env() -> None:
    """Run in a host's process before anything else (its sitecustomize): become that host."""
    libc = ctypes.CDLL(None, use_errno=True)
    netns = os.environ.get(NETNS_ENV)
    if netns:
        fd = os.open(netns, os.O_RDONLY)
        try:
            if libc.setns(fd, _CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns {netns}")
        finally:
            os.close(fd)
    name = os.environ.get(HOSTNAME_ENV, "").encode()
    if name and (libc.unshare(_CLONE_NEWUTS) != 0 or libc.sethostname(name, len(name)) != 0):
        raise OSError(ctypes.get_errno(), f"hostname {name!r}")
    machine_id = os.environ.get(MACHINE_ID_ENV, "")
    if machine_id:
        _see_machine_id(libc, machine_id)
    offset = float(os.environ.get(OFFSET_ENV, "0") or 0)
    if offset:
        time.time = lambda real=time.time, offset=offset: real() + offset  # type: ignore[misc]


def _see_machine_id(libc: ctypes.CDLL, path: str) -> None:
    """Mounts of our own (private: nothing propagates back), with `path` over /etc/machine-id."""
    if (
        libc.unshare(_CLONE_NEWNS) != 0
        or libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None) != 0
        or libc.mount(path.encode(), MACHINE_ID.encode(), None, _MS_BIND, None) != 0
    ):
        raise OSError(ctypes.get_errno(), f"machine id {path!r} over {MACHINE_ID}")


def inner_pid(unshare_pid: int) -> int:
    """The host pid of the command a `PID_NAMESPACE` prefix started (0 while not yet forked)."""
    try:
        children = Path(f"/proc/{unshare_pid}/task/{unshare_pid}/children").read_text().split()
    except OSError:
        return 0
    return int(children[0]) if children else 0


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


def _free_subnets(n: int) -> list[int]:
    """`n` third octets N whose 10.231.N.0/30 no interface here uses yet."""
    used = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, timeout=10).stdout
    free = [n for n in range(1, 255) if f"10.231.{n}." not in used]
    return random.sample(free, n)


def hostnames_available() -> bool:
    """Whether a process here may take a hostname of its own (a UTS namespace)."""
    try:
        return subprocess.run(["unshare", "--uts", "true"], timeout=10).returncode == 0
    except OSError:
        return False


def machine_ids_available() -> bool:
    """Whether a process here may see a machine id of its own (a mount namespace, a bind)."""
    if not os.path.isfile(MACHINE_ID):
        return False
    try:
        probe = ["unshare", "--mount", "mount", "--bind", MACHINE_ID, MACHINE_ID]
        return subprocess.run(probe, capture_output=True, timeout=10).returncode == 0
    except OSError:
        return False


def namespaces_available() -> bool:
    """Whether this process may create network namespaces (and the `ip` tool is there)."""
    if os.geteuid() != 0 or not shutil.which("ip"):
        return False
    probe = f"mhprobe{os.getpid()}"
    try:
        _ip("netns", "add", probe)
    except (subprocess.CalledProcessError, OSError):
        return False
    _ip("netns", "del", probe)
    return True


class Host:
    """One host: how its processes reach Redis (`address`, `port`), its env, its link."""

    def __init__(self, name: str, site: Path, root: Path) -> None:
        self.name = name
        self.hostname = name  # what its processes' gethostname() says (see Hosts)
        self.machine_id = ""  # what its processes read in /etc/machine-id ("": this machine's)
        self.site = site
        self.root = root
        self.address = ""  # this host's own address (a LoopbackHost's proxy listens on it)
        self.port = 0  # the Redis port it connects to (a LoopbackHost's: its proxy's)
        self.redis_side = ""  # the address Redis must listen on for this host ("" = loopback)
        self.netns = ""

    @property
    def url(self) -> str:
        return f"redis://{self.address}:{self.port}/0"

    def env(self, wall_offset: float = 0.0) -> dict[str, str]:
        """Environment entries that make a Python process of this host (to merge into its env)."""
        return {
            "PYTHONPATH": os.pathsep.join([str(self.site), *self.root_path()]),
            NETNS_ENV: self.netns,
            HOSTNAME_ENV: self.hostname if self.hostname != socket.gethostname() else "",
            OFFSET_ENV: repr(wall_offset),
            MACHINE_ID_ENV: self._machine_id_file(),
        }

    def _machine_id_file(self) -> str:
        """The file its processes see as /etc/machine-id ("" for this machine's own)."""
        if not self.machine_id:
            return ""
        path = self.site / f"machine-id-{self.name}"
        path.write_text(self.machine_id + "\n")
        return str(path)

    def root_path(self) -> list[str]:
        return [str(self.root / "tests"), str(self.root)]

    def cut(self) -> None:
        raise NotImplementedError

    def restore(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Undo what the host set up (idempotent)."""


class NamespaceHost(Host):
    """A network namespace joined by a veth pair: `cut` sets our end down."""

    def __init__(self, name: str, site: Path, root: Path, subnet: int, tag: str) -> None:
        super().__init__(name, site, root)
        self.netns = f"mh{tag}{name[-1]}"
        self.outer, self.inner = f"mh{tag}{name[-1]}0", f"mh{tag}{name[-1]}1"
        self.redis_side, self.address = f"10.231.{subnet}.1", f"10.231.{subnet}.2"
        self.netns_path = f"/run/netns/{self.netns}"

    def setup(self) -> None:
        _ip("netns", "add", self.netns)
        pair = ("type", "veth", "peer", "name", self.inner, "netns", self.netns)
        _ip("link", "add", self.outer, *pair)
        _ip("addr", "add", f"{self.redis_side}/30", "dev", self.outer)
        _ip("link", "set", self.outer, "up")
        _ip("-n", self.netns, "addr", "add", f"{self.address}/30", "dev", self.inner)
        _ip("-n", self.netns, "link", "set", self.inner, "up")
        _ip("-n", self.netns, "link", "set", "lo", "up")

    def env(self, wall_offset: float = 0.0) -> dict[str, str]:
        env = super().env(wall_offset)
        env[NETNS_ENV] = self.netns_path
        return env

    @property
    def url(self) -> str:
        return f"redis://{self.redis_side}:{self.port}/0"  # Redis, as seen from inside

    def cut(self) -> None:
        _ip("link", "set", self.outer, "down")

    def restore(self) -> None:
        _ip("link", "set", self.outer, "up")

    def close(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError, OSError):
            _ip("netns", "del", self.netns)  # takes the veth pair with it


class LoopbackHost(Host):
    """A loopback address of its own, reaching Redis through a ChaosProxy bound on it."""

    def __init__(self, name: str, site: Path, root: Path, address: str) -> None:
        super().__init__(name, site, root)
        self.address = address
        self.proxy: ChaosProxy | None = None

    def connect(self, redis_port: int) -> None:
        self.proxy = ChaosProxy("127.0.0.1", redis_port, listen_host=self.address).start()
        self.port = self.proxy.port

    def cut(self) -> None:
        assert self.proxy is not None
        self.proxy.set_mode(BLACKHOLE)

    def restore(self) -> None:
        assert self.proxy is not None
        self.proxy.set_mode(PASS)

    def close(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()
            self.proxy = None


class Hosts:
    """Hosts `names` for one test; `redis_args()` makes a RedisServer reachable from all."""

    def __init__(self, tmp: Path, root: Path, names: tuple[str, ...] = ("host-a", "host-b")):
        site = tmp / "host-site"
        site.mkdir(parents=True, exist_ok=True)
        (site / "sitecustomize.py").write_text(_SHIM)
        self.namespaces = not os.environ.get(LOOPBACK_ENV) and namespaces_available()
        self.hosts: list[Host] = []
        if self.namespaces:
            tag = f"{random.randrange(16**5):05x}"  # unique names: a deleted pair goes lazily
            for name, subnet in zip(names, _free_subnets(len(names)), strict=True):
                host = NamespaceHost(name, site, root, subnet, tag)
                self.hosts.append(host)
                try:
                    host.setup()
                except BaseException:
                    self.close()
                    raise
        else:
            for i, name in enumerate(names):
                self.hosts.append(LoopbackHost(name, site, root, f"127.0.0.{i + 2}"))
        if not hostnames_available():  # then both hosts share this machine's name: ids by pid
            for shared in self.hosts:
                shared.hostname = socket.gethostname()

    def redis_args(self) -> list[str]:
        """Extra redis-server arguments: listen on every host's link too."""
        if not self.namespaces:
            return []
        binds = ["127.0.0.1", *(h.redis_side for h in self.hosts)]
        return ["--bind", " ".join(binds), "--protected-mode", "no"]

    def connect(self, redis_port: int) -> None:
        """Point every host at Redis on `redis_port` (starting the proxies without namespaces)."""
        for host in self.hosts:
            host.port = redis_port
            if isinstance(host, LoopbackHost):
                host.connect(redis_port)

    def close(self) -> None:
        for host in self.hosts:
            host.close()

    def __iter__(self) -> Iterator[Host]:
        return iter(self.hosts)
