"""`python -m tools.chaos_proxy` (from the checkout root): see docs/chaos_proxy.md."""

from tools.chaos_proxy.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
