"""Fail CI when a test was skipped on a machine that has everything the suite needs.

On a CI machine (root, ../shared beside the checkout, apt, docker) nothing the project's tests use is missing, so a
skip there hides a break: an import that stopped working, a file that went away. Usage: check_skips.py SKIPS.json
(written by tests/conftest.py when CASSAVA_SKIPS_FILE is set)."""
import json
import os
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def missing_for_ci() -> list:
    """What this machine lacks of a CI machine; empty on one."""
    checks = {"root": os.geteuid() == 0, "../shared": (REPO.parent / "shared").is_dir(),
              "apt": shutil.which("apt-get") is not None,
              "docker": any(shutil.which(name) or Path("/usr/sbin", name).exists() for name in ("docker", "dockerd"))}
    return [name for name, present in checks.items() if not present]


def main(path: str) -> int:
    skips = json.loads(Path(path).read_text())
    missing = missing_for_ci()
    if missing:
        print(f"skip check: not a CI machine (no {', '.join(missing)}): {len(skips)} skipped test(s) allowed")
        return 0
    if not skips:
        print("skip check: no test skipped")
        return 0
    print(f"skip check: {len(skips)} test(s) skipped on a CI machine, where nothing they need is missing:")
    for skip in skips:
        print(f"  {skip['test']}: {skip['reason']}")
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
