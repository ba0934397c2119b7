#!/usr/bin/env python3
"""Run the soak test from a checkout: `python -m tools.soak` (see docs/soak.md).

`tools` is importable from the checkout root only, so this script runs the module in its place
(exec: same pid, signals reach the soak) with the checkout root on its import path; relative
paths in the arguments keep meaning the caller's folder.
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

if __name__ == "__main__":
    path = os.environ.get("PYTHONPATH")
    env = dict(os.environ, PYTHONPATH=ROOT + (os.pathsep + path if path else ""))
    os.execve(sys.executable, [sys.executable, "-m", "tools.soak", *sys.argv[1:]], env)
