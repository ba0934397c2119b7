"""Process exit codes: part of the contract with supervisord, systemd and operators.

Every exit code taskd uses is named here (the BSD sysexits values where one fits).
"""

OK = 0  # clean stop (SIGTERM/SIGINT, drained)
FAILED = 1  # the web server could not start (gunicorn's own convention)
UNAVAILABLE = 69  # a one-shot command could not reach Redis, or replicas did not confirm
STALLED = 70  # the stall detector fired (stacks dumped first)
IO = 74  # a producer could not read its input (EX_IOERR)
DRAIN_TIMEOUT = 75  # stop requested but the in-flight task outlived --drain-timeout
CONFIG = 78  # bad configuration: one clear line on stderr
SIGNAL_BASE = 128  # a second signal exits at once with 128 + its number, as a shell reports it
INTERRUPTED = 130  # Ctrl-C (SIGINT) before the command got going: SIGNAL_BASE + 2


def killed_by(signum: int) -> int:
    """The exit code of a process that stops at once on signal `signum` (128 + signum)."""
    return SIGNAL_BASE + signum
