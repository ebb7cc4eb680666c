"""Backends that execute many runs: `local` (a process pool over GPUs or CPU cores)."""
