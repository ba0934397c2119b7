#!/usr/bin/env python3
"""Run the soak test from a checkout; see docs/soak.md (same as `python -m daemon.soak`)."""

import os
import sys

# Make `daemon` importable when run as scripts/soak.py without installing the package.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from daemon.soak import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
