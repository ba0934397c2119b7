"""`python -m daemon` is the same as the `taskd` command."""

from daemon.cli import main

raise SystemExit(main())
