"""`python -m tools.soak` (from the checkout root): the soak test; see docs/soak.md."""

from tools.soak.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
