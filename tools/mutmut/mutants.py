"""Per-module figures and samples from mutmut's result files (``mutants/runner/*.py.meta``).

``python tools/mutmut/mutants.py summary`` prints mutants / killed / survived / timeout /
no tests / not checked per module (the table in docs/TESTING.md);
``python tools/mutmut/mutants.py sample sinks 250`` prints a reproducible random sample of one
module's mutant names (seed 10), for ``mutmut run $(...)`` when a whole module takes too long;
``sample recorder,guards 50`` samples several modules together, ``sample engine 120`` the
engine's six (pipeline, sender, recorder, accounting, guards, priming).
Both read the files a ``mutmut run`` (``make mutate``) leaves behind.
"""

from __future__ import annotations

import json
import random
import sys
from collections import Counter
from pathlib import Path

MODULES = ("retry", "cache", "limits", "jobs", "sinks", "pipeline")
# The engine's parts (issue-10 refactor): ``sample engine N`` samples these six together.
ENGINE = ("pipeline", "sender", "recorder", "accounting", "guards", "priming")
# mutmut 3's exit codes (mutmut.stats.status_by_exit_code), folded to what the table shows.
STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped"}
STATUS.update({c: "timeout" for c in (36, -24, 24, 152, 255)})
COLUMNS = ("killed", "survived", "timeout", "no tests", "skipped", "not checked", "other")


def results(module: str) -> dict[str, int | None]:
    meta = Path("mutants/runner") / f"{module}.py.meta"
    data: dict[str, int | None] = json.loads(meta.read_text())["exit_code_by_key"]
    return data


def summary() -> None:
    print(f"{'module':10}{'mutants':>8}" + "".join(f"{c:>12}" for c in COLUMNS))
    for module in dict.fromkeys(MODULES + ENGINE):
        try:
            codes = results(module)
        except FileNotFoundError:
            continue
        counts = Counter(
            "not checked" if c is None else STATUS.get(c, "other") for c in codes.values()
        )
        print(f"{module:10}{len(codes):>8}" + "".join(f"{counts[c]:>12}" for c in COLUMNS))


def main(argv: list[str]) -> int:
    if argv[:1] == ["summary"]:
        summary()
        return 0
    if len(argv) == 3 and argv[0] == "sample":
        modules = ENGINE if argv[1] == "engine" else argv[1].split(",")
        names = sorted(name for m in modules for name in results(m))
        n = int(argv[2])
        print("\n".join(names if n >= len(names) else sorted(random.Random(10).sample(names, n))))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
