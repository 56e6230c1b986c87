"""CPU time of processes and of the machine, read from ``/proc`` (Linux).

Benchmarks on a shared 2-core machine compare CPU seconds, which neighbours skew far less than
wall-clock time, and add up what every process taking part spent.
"""

from __future__ import annotations

import os
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")
#: PostgreSQL's background processes (their work is the server's, not one connection's).
PG_AUX = ("checkpointer", "background writer", "walwriter", "autovacuum")


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads); 0 once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()  # the name in (...) may hold spaces
    return (int(fields[11]) + int(fields[12])) / _TICK


def machine_busy() -> float:
    """CPU seconds the whole machine spent so far (every core, idle and iowait excluded)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values[:8]) - idle) / _TICK


def postgres_aux_pids() -> list[int]:
    """Pids of the local PostgreSQL server's background processes (WAL writer, ...)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().decode("utf-8", "replace")
        except OSError:
            continue
        if cmd.startswith("postgres: ") and any(name in cmd for name in PG_AUX):
            out.append(int(entry.name))
    return out
