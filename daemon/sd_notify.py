"""The systemd notify protocol (sd_notify(3)) without libsystemd: one datagram per message.

Under a `Type=notify` unit systemd passes `$NOTIFY_SOCKET` (a path, or an abstract socket name
starting with '@'); taskd sends `READY=1` once Redis answers, `STATUS=` lines on state changes,
`STOPPING=1` when it starts to drain, and `WATCHDOG=1` from the stall detector's tick only
while the loop is not stalled, at half of `$WATCHDOG_USEC`: a frozen or stuck process goes
silent and systemd's `WatchdogSec=` restarts it. Every send is non-blocking and swallows its
errors: a notify socket that is gone or full never holds up or breaks the loop.

These variables are systemd's contract with the process, not taskd settings: they are read
once (`from_environ`) and removed from the environment, so neither a handler's subprocesses
nor gunicorn's workers talk to the service manager in taskd's name.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Callable, MutableMapping

ENV_SOCKET = "NOTIFY_SOCKET"
ENV_WATCHDOG_USEC = "WATCHDOG_USEC"
ENV_WATCHDOG_PID = "WATCHDOG_PID"


def socket_address(value: str) -> str | None:
    """The AF_UNIX address `$NOTIFY_SOCKET` names; None for forms this module does not speak.

    '@name' is the abstract namespace (a leading NUL byte for the kernel); anything else must
    be an absolute path (systemd's vsock: addresses are not supported).
    """
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None


def watchdog_interval(usec: str | None, pid: str | None, own_pid: int) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of $WATCHDOG_USEC), or None: no watchdog for us.

    The watchdog is ours only when $WATCHDOG_PID is unset or names this very process (a
    variable inherited from a parent that is being watched is not an order to ping).
    """
    if not usec:
        return None
    if pid:
        try:
            if int(pid) != own_pid:
                return None
        except ValueError:
            return None
    try:
        micros = int(usec)
    except ValueError:
        return None
    return micros / 2e6 if micros > 0 else None


class Notifier:
    """Sends sd_notify messages; a Notifier without an address is a no-op (not under systemd)."""

    def __init__(
        self,
        address: str | None,
        ping_interval: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.address = address
        self.ping_interval = ping_interval  # None: systemd watches no watchdog of ours
        self.clock = clock
        self.sent = 0  # datagrams accepted by the kernel
        self.dropped = 0  # datagrams lost (socket gone, full, refused): never an error
        self._last_ping: float | None = None
        # Opened up front, shared without a lock: a datagram send is atomic, and a lock could
        # deadlock when the SIGTERM handler (on the main thread) sends while the main thread
        # holds it.
        self._sock: socket.socket | None = None
        if address is not None:
            with contextlib.suppress(OSError):
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)

    @classmethod
    def from_environ(
        cls, environ: MutableMapping[str, str] | None = None, unset: bool = True
    ) -> Notifier:
        """The notifier systemd's variables describe; removes them from `environ` if `unset`."""
        env = os.environ if environ is None else environ
        raw = env.get(ENV_SOCKET, "")
        address = socket_address(raw) if raw else None
        interval = watchdog_interval(
            env.get(ENV_WATCHDOG_USEC), env.get(ENV_WATCHDOG_PID), os.getpid()
        )
        if unset:
            for name in (ENV_SOCKET, ENV_WATCHDOG_USEC, ENV_WATCHDOG_PID):
                env.pop(name, None)
        return cls(address, interval if address else None)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *fields: str) -> bool:
        """Send `fields` ("READY=1", "STATUS=...") as one datagram; False if it was not taken.

        Never blocks and never raises: the socket is non-blocking and every error is a drop.
        """
        sock, address = self._sock, self.address
        if sock is None or address is None:
            return False
        message = "\n".join(f.replace("\n", " ") for f in fields).encode("utf-8", "replace")
        try:
            sock.sendto(message, address)
            self.sent += 1
            return True
        except Exception:  # noqa: BLE001 - a lost notification must never reach the loop
            self.dropped += 1
            return False

    def ready(self, status: str) -> bool:
        """The service is up: systemd ends the start job (`Type=notify`)."""
        return self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> bool:
        """A free-form line that `systemctl status` shows."""
        return self.send(f"STATUS={status}")

    def stopping(self, status: str) -> bool:
        """The service has begun to stop (drain): systemd shows it as deactivating."""
        return self.send("STOPPING=1", f"STATUS={status}")

    def watchdog_due(self, tick: float) -> bool:
        """Whether a ping sent now keeps the gap under half of $WATCHDOG_USEC.

        Called every `tick` seconds: a ping is due once waiting one more tick would pass the
        interval, so pings are at most `ping_interval` apart and not much closer.
        """
        if self.ping_interval is None:
            return False
        last = self._last_ping
        return last is None or self.clock() - last >= self.ping_interval - tick

    def watchdog(self, tick: float) -> bool:
        """Ping the systemd watchdog if one is due (the caller has checked the loop progresses)."""
        if not self.watchdog_due(tick):
            return False
        self._last_ping = self.clock()
        return self.send("WATCHDOG=1")

    def tick_interval(self, default: float) -> float:
        """How often the stall detector must look so that no ping comes late."""
        if self.ping_interval is None:
            return default
        return min(default, self.ping_interval)

    def close(self) -> None:
        """Close the socket: later sends are dropped."""
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()


def utc_clock_time(wall: float | None = None) -> str:
    """An instant as 'YYYY-MM-DD HH:MM:SS UTC', for STATUS lines people read."""
    when = time.time() if wall is None else wall
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(when))
