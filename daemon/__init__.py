"""taskd: a Redis task-consumer daemon that never hangs silently and never loses a task."""

__version__ = "0.1.0"
