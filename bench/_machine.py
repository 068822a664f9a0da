"""What machine a bench ran on, and how fast it runs plain Python right now.

The absolute targets (µs per derivation, requests per second of a replay) depend on the
machine, and these shared VMs differ by 2× from one day to the next: every bench that holds
an absolute target prints `machine_line()` first, so two runs can be compared by their
calibration figure (the same loop timed the same way) as well as by their ratios.
"""

from __future__ import annotations

import os
import platform
import timeit
from pathlib import Path

CALIBRATION = "sum(range(1000))"  # a plain-Python loop: what an interpreter-bound bench pays


def machine() -> str:
    """The platform, CPUs and Python of this machine."""
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{platform.platform()}, {os.cpu_count()} CPUs{', ' + cpu if cpu else ''};"
        f" Python {platform.python_version()}"
    )


def calibration_us() -> float:
    """µs per `sum(range(1000))`, the best of 5 repeats of 20,000 (lower is faster)."""
    return min(timeit.repeat(CALIBRATION, number=20_000, repeat=5)) / 20_000 * 1e6


def machine_line() -> str:
    return f"machine: {machine()}; `{CALIBRATION}` {calibration_us():.1f} µs (best of 5)"
