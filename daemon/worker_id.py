"""The default worker id: `<host>:<machine tag>:<supervisor process name, else pid>`.

The host name comes first, for people; the machine tag (8 hex) tells apart machines that share
a host name (cloned VMs, containers with the host's network and hostname, pods with
`hostNetwork`), so that ids are unique across hosts without a `--worker-id`.

The tag is an HMAC-SHA256, keyed with this machine's id (`/etc/machine-id`, else
`/var/lib/dbus/machine-id`, else the kernel's boot id), of a fixed taskd label and, in a
container (a PID namespace other than the initial one), the PID namespace and the boot id:
containers of one image share `/etc/machine-id` (or have none), their PID namespaces differ,
and the boot id tells apart two machines whose PID namespace numbers happen to be equal.
On a machine's own PID namespace the tag depends on the machine id alone: the same across
process restarts and reboots (a restarted process takes back its own processing list at
once); in a container it is the same for the container's life. Keyed and truncated as
machine-id(5) asks of any id derived from the machine id: the machine id is not exposed.

`machine_tag` is the pure derivation; `local_machine_tag` reads its inputs from /etc, /proc.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import socket
import string

HOST_PIDNS = "pid:[4026531836]"  # the initial PID namespace (the kernel's PROC_PID_INIT_INO)
MACHINE_ID_FILES = ("/etc/machine-id", "/var/lib/dbus/machine-id")
BOOT_ID_FILE = "/proc/sys/kernel/random/boot_id"
PIDNS_LINK = "/proc/self/ns/pid"
TAG_LENGTH = 8  # hex digits: 32 bits, to tell apart the machines that share one host name
_LABEL = b"taskd worker id"  # what the HMAC signs: taskd's own (never change it: ids would)


def is_machine_id(text: str) -> bool:
    """A machine id as machine-id(5) defines it: 32 hex digits (not "", not "uninitialized")."""
    return len(text) == 32 and all(c in string.hexdigits for c in text)


def machine_tag(machine_id: str, pidns: str, boot_id: str) -> str:
    """The 8 hex of a machine (and container): pure, the same for the same inputs.

    `machine_id`: the machine id ("" when none was found: the boot id stands in); `pidns`:
    the target of /proc/self/ns/pid; `boot_id`: /proc/sys/kernel/random/boot_id.
    """
    key = (machine_id.lower() if is_machine_id(machine_id) else boot_id).encode()
    message = _LABEL
    if pidns != HOST_PIDNS:  # a container: its PID namespace, on this boot of this kernel
        message += b"\0" + pidns.encode() + b"\0" + boot_id.encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()[:TAG_LENGTH]


def local_machine_tag() -> str:
    """This process's machine tag, from the files it is derived from."""
    machine_id = next(
        (text for text in map(read_text, MACHINE_ID_FILES) if is_machine_id(text)), ""
    )
    return machine_tag(machine_id, read_link(PIDNS_LINK), read_text(BOOT_ID_FILE))


def local_default_worker_id(process_name: str) -> str:
    """This process's default worker id (`process_name`: supervisord's, else "": the pid)."""
    return f"{socket.gethostname()}:{local_machine_tag()}:{process_name or os.getpid()}"


def read_text(path: str) -> str:
    """A small text file of /proc or /etc, stripped; "" where it cannot be read."""
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            return handle.read().strip()
    except OSError:
        return ""


def read_link(path: str) -> str:
    """Where a link of /proc points; "" where it cannot be read."""
    try:
        return os.readlink(path)
    except OSError:
        return ""
