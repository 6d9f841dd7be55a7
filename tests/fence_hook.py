"""A fencing command for the lab (tests/settings.py FENCE_COMMANDS): appends its
arguments to .lab/log/fence-hook.log and says so, as a power-off script would report.
Exits 3 ("could not fence") while .lab/log/fence-hook.fail exists."""

from __future__ import annotations

import sys
from pathlib import Path

LOG = Path(__file__).resolve().parent.parent / ".lab" / "log" / "fence-hook.log"
FAIL = LOG.with_suffix(".fail")


def main(argv: list[str]) -> int:
    with LOG.open("a") as out:
        out.write(" ".join(argv) + "\n")
    if FAIL.exists():
        print(f"could not power off {argv[0]}", file=sys.stderr)
        return 3
    print(f"powered off {argv[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
