#!/usr/bin/env python3
"""Run the TCP fault-injection proxy from a checkout: `python -m tools.chaos_proxy`.

See docs/chaos_proxy.md. `tools` is importable from the checkout root only, so this script runs
the module in its place (exec: same pid, signals reach the proxy) with the checkout root on its
import path.
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

if __name__ == "__main__":
    path = os.environ.get("PYTHONPATH")
    env = dict(os.environ, PYTHONPATH=ROOT + (os.pathsep + path if path else ""))
    os.execve(sys.executable, [sys.executable, "-m", "tools.chaos_proxy", *sys.argv[1:]], env)
