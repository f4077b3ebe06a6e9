"""The host's CPU as Linux describes it in /proc/cpuinfo (elsewhere, what ``platform`` knows)."""

from __future__ import annotations

import platform

CPUINFO = "/proc/cpuinfo"


def cpuinfo_field(name: str, path: str = CPUINFO) -> str | None:
    """The value of the first ``name : value`` line of /proc/cpuinfo; None where there is none."""
    try:
        with open(path) as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip() == name:
                    return value.strip()
    except OSError:  # not Linux
        return None
    return None


def cpu_model(path: str = CPUINFO) -> str:
    """The CPU's model name ("Intel(R) Xeon(R) Processor"), or the platform's processor or machine."""
    return cpuinfo_field("model name", path) or platform.processor() or platform.machine()


def cpu_flags(path: str = CPUINFO) -> set[str]:
    """The CPU's feature flags ("avx2", "fma", ...); empty where /proc/cpuinfo is missing."""
    return set((cpuinfo_field("flags", path) or "").split())
