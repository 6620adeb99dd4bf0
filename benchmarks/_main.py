"""What every benchmark's `main` does around its own run: a work directory, the report as a table or as
JSON (with the command that reproduces it), and the exit status its `failed` judges."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

Report = dict[str, Any]


def run_benchmark(script: str, args, argv: list[str] | None, run: Callable[[Any, Path], Awaitable[Report]],
                  print_report: Callable[[Report], None], failed: Callable[[Report], bool]) -> int:
    """`run(args, workdir)` in a fresh temporary directory (kept with `args.keep`); prints the report
    (`args.json`: as JSON) and returns 1 when `failed(report)`, else 0."""
    workdir = Path(tempfile.mkdtemp(prefix=f"rtem-{Path(script).stem}-"))
    try:
        report = asyncio.run(run(args, workdir))
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    report["command"] = " ".join([f"python benchmarks/{Path(script).name}", *(argv if argv is not None else sys.argv[1:])])
    if args.keep:
        report["workdir"] = str(workdir)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 1 if failed(report) else 0
