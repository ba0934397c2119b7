"""Process exit codes: part of the contract with supervisord and operators."""

OK = 0  # clean stop (SIGTERM/SIGINT, drained)
STALLED = 70  # the stall watchdog fired (stacks dumped first)
DRAIN_TIMEOUT = 75  # stop requested but the in-flight task outlived --drain-timeout
CONFIG = 78  # bad configuration: one clear line on stderr
