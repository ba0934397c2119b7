#!/usr/bin/env python3
"""Run the TCP fault-injection proxy from a checkout; see docs/chaos_proxy.md."""

import os
import sys

# Make `daemon` importable when run as scripts/chaos_proxy.py without installing the package.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from daemon.chaos_proxy import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
