"""`rtem rules check | test | replay | suggest`: the rule author's commands.

Exit codes: 0 all good; 1 the check, a test or a replay gate failed; 2 a usage error (a path that
does not exist, a bad option value, a store that is not there). `--json` prints one JSON object.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from ._common import VERDICT_COLOUR, JsonOpt, TopologyOpt, err, fail, out, settings, topology_or_analyzed

rules_app = typer.Typer(
    help="Check, test and replay rules (guardrails, action contracts, detections) before they ship.\n\n"
         "PATH is a rules directory (with guardrails/, contracts/, detect/), one of those directories, or one "
         "file; by default RTEM_RULES_DIR, else the rules packaged with rtem.",
    no_args_is_help=True)

PathArg = Annotated[Optional[Path], typer.Argument(
    help="Rules directory, guardrails/contracts/detect directory, or file (default: RTEM_RULES_DIR or the "
         "packaged rules).", show_default=False)]


def _default_path(path: Path | None) -> Path | None:
    if path is not None:
        if not path.exists():
            fail(f"{path}: no such file or directory")
        return path
    return settings().rules_dir


# -- check ----------------------------------------------------------------------------------------

@rules_app.command("check")
def check(path: PathArg = None, json_out: JsonOpt = False,
          strict: Annotated[bool, typer.Option("--strict", help="Fail on warnings too.")] = False) -> None:
    """Validate and compile every rule file; report every problem in one run, each at file:line:column
    with the offending key and a suggestion.

    Finds YAML syntax errors, schema errors (an unknown field, with the one it probably meant; a bad
    operator or value), unquoted times, unknown time zones, unknown action types, duplicate ids, rules
    that can never match, rules shadowed by a deny, and bad contracts and detections. Exits 1 on any
    error (with --strict, on any warning). Fast enough for a pre-commit hook.
    """
    from rules import check_rules

    report = check_rules(_default_path(path))
    failed = not report.ok or (strict and report.warnings)
    if json_out:
        print(json.dumps(report.to_dict(), indent=2))
        raise typer.Exit(1 if failed else 0)
    for finding in report.findings:
        colour = "red" if finding.severity == "error" else "yellow"
        # name the key when the message does not: a detection's "'5 minutes' is not valid here"
        key = f"{finding.key}: " if finding.key and finding.key not in finding.message and \
            finding.kind != "yaml_syntax" else ""
        out.print(f"{escape(finding.file)}:{finding.line}:{finding.column}: [{colour}]{finding.severity}"
                  f"[/][dim]\\[{finding.kind}][/] {escape(key + finding.message)}")
        if finding.suggestion:
            out.print(f"    [dim]suggestion:[/] {escape(finding.suggestion)}")
    counts = report.counts()
    what = (f"{counts['guardrail_files']} guardrail file{'s' * (counts['guardrail_files'] != 1)} "
            f"({counts['guardrails']} rules), {counts['contracts']} contracts, {counts['detections']} detections, "
            f"{counts['test_files']} test file{'s' * (counts['test_files'] != 1)}")
    if report.ok:
        extra = f", {counts['warnings']} warning{'s' * (counts['warnings'] != 1)}" if counts["warnings"] else ""
        out.print(f"[green]✓[/] rules OK{extra} · {what} · version {report.digest} · {report.elapsed_s:.2f} s")
    else:
        out.print(f"[red]✗[/] {counts['errors']} error{'s' * (counts['errors'] != 1)}, {counts['warnings']} "
                  f"warning{'s' * (counts['warnings'] != 1)} · {what} · {report.elapsed_s:.2f} s")
    raise typer.Exit(1 if failed else 0)


# -- test -----------------------------------------------------------------------------------------

@rules_app.command("test")
def test(path: PathArg = None, json_out: JsonOpt = False,
         fail_under: Annotated[Optional[float], typer.Option(
             "--fail-under", min=0, max=100,
             help="Also fail when fewer than this percent of the guardrails under test fire in some step.")] = None,
         ) -> None:
    """Run the guardrail tests (*.test.yaml beside the rules) and report failures and rule coverage.

    Each test proposes actions at event times in a context (topology, incident, observed state, earlier
    actions) and says which verdict and which matched rules it expects. A failing step shows what
    differs: the outcome, rules expected but not matched, rules matched but not expected.
    """
    from rules import check_contracts, find_layout, find_test_files, run_tests

    target = _default_path(path)
    layout = find_layout(target)
    files = find_test_files(target if target is not None else layout.root)
    if not files:
        fail(f"{layout.root}: no rule tests (*.test.yaml) here")
    contracts, problems = check_contracts(layout.contracts)
    if problems:
        fail(f"the contracts do not load: {problems[0]} (run `rtem rules check`)")
    report = run_tests(files, contracts)
    coverage_failed = fail_under is not None and report.coverage < fail_under
    failed = not report.ok or coverage_failed
    if json_out:
        print(json.dumps({**report.to_dict(), "fail_under": fail_under, "coverage_failed": coverage_failed}, indent=2))
        raise typer.Exit(1 if failed else 0)
    for problem in report.problems:
        out.print(f"{escape(str(problem.file))}:{problem.line}:{problem.column}: [red]error[/] "
                  f"{escape(problem.reason)}" + (f"\n    [dim]hint:[/] {escape(problem.hint)}" if problem.hint else ""))
    for file in report.files:
        results = [r for r in report.results if r.file == file]
        tests = dict.fromkeys(r.test for r in results)
        out.print(f"[bold]{escape(file)}[/]: {len(tests)} test{'s' * (len(tests) != 1)}, {len(results)} steps")
        for name in tests:
            steps = [r for r in results if r.test == name]
            bad = [r for r in steps if not r.passed]
            out.print(f"  {'[red]✗' if bad else '[green]✓'}[/] {escape(name)}")
            for result in bad:
                _print_failure(result)
    _print_coverage(report)
    summary = (f"{len(report.results) - len(report.failures)}/{len(report.results)} steps passed in "
               f"{report.tests} tests")
    if report.problems:
        summary += f", {len(report.problems)} test file error{'s' * (len(report.problems) != 1)}"
    if coverage_failed:
        summary += f"; coverage {report.coverage:.0f}% is under --fail-under {fail_under:g}%"
    out.print(("[red]FAIL[/] " if failed else "[green]PASS[/] ") + summary)
    raise typer.Exit(1 if failed else 0)


def _print_failure(result) -> None:
    proposal = result.proposal
    at = result.at.isoformat().replace("+00:00", "Z")
    out.print(f"      step {result.step} at {at}: {escape(proposal['type'])} on {escape(proposal['target'])} "
              f"[dim]({escape(result.file)}:{result.line})[/]")
    expected, got = result.expected, result.got
    if "outcome" in expected and expected["outcome"] != got["outcome"]:
        out.print(f"        outcome   expected [{VERDICT_COLOUR[expected['outcome']]}]{expected['outcome']}[/], "
                  f"got [{VERDICT_COLOUR[got['outcome']]}]{got['outcome']}[/]")
    if result.missing or result.unexpected:
        lines = [f"[red]- {escape(r)}[/]  expected, did not match" for r in result.missing]
        lines += [f"[green]+ {escape(r)}[/]  matched, not expected" for r in result.unexpected]
        for index, line in enumerate(lines):
            out.print(f"        {'rules' if index == 0 else '     '}     {line}")
    if "approver_role" in expected and expected["approver_role"] != got["approver_role"]:
        out.print(f"        approver  expected {escape(str(expected['approver_role']))}, "
                  f"got {escape(str(got['approver_role']))}")
    for reason in got["reasons"]:
        out.print(f"        [dim]reason    {escape(reason)}[/]")


def _print_coverage(report) -> None:
    total, missing = len(report.rules), report.not_exercised
    out.print(f"coverage: {total - len(missing)}/{total} guardrails fired in some step ({report.coverage:.0f}%)")
    for rule in missing:
        out.print(f"  [yellow]not exercised[/] {escape(rule.id)} [dim]({escape(rule.source)}:{rule.line})[/]")


# -- replay ---------------------------------------------------------------------------------------

@rules_app.command("replay")
def replay(
    since: Annotated[str, typer.Option("--since", help="Replay verdicts recorded since this time: an ISO date or "
                                       "date-time (UTC by default), or a duration ago such as 24h or 7d.")],
    rules: Annotated[Optional[Path], typer.Option("--rules", help="The edited rule set (a rules directory, or a "
                     "guardrails directory or file; default: RTEM_RULES_DIR or the packaged rules).")] = None,
    topology: TopologyOpt = None,
    db: Annotated[Optional[Path], typer.Option("--db", help="The store with the audit log (default: "
                  "RTEM_DATA_DIR/rtem.db).")] = None,
    json_out: JsonOpt = False,
    fail_on_change: Annotated[bool, typer.Option("--fail-on-change", help="Exit 1 when any verdict's outcome "
                              "would change (a CI gate for rule changes).")] = False,
) -> None:
    """Judge the proposals recorded in the audit log again with an edited rule set, and show which past
    verdicts would change and why, before the change ships.

    Each proposal is judged in the context it was judged in live: the incident's entities and severity,
    the event time, the action history as it was then, and the observed state as of that time.
    """
    from rules import check_rules

    from ..rules_replay import parse_since, replay as run_replay

    cfg = settings()
    try:
        start = parse_since(since)
    except ValueError:
        fail(f"--since {since!r}: give an ISO date or date-time, or a duration ago such as 24h or 7d")
    path = db or cfg.db_path
    if not path.is_file():
        fail(f"{path}: no store here (pass --db, or set RTEM_DATA_DIR)")
    topo = topology_or_analyzed(cfg, topology, path, quiet=json_out, required=True)
    if rules is not None and not rules.exists():
        fail(f"{rules}: no such file or directory")
    checked = check_rules(rules if rules is not None else cfg.rules_dir)
    if not checked.ok or checked.guard is None:
        for finding in checked.errors:
            err.print(escape(str(finding)))
        err.print("[red]✗[/] the rule set under test does not pass `rtem rules check`")
        raise typer.Exit(1)
    report = run_replay(path, checked, topo, start)
    failed = fail_on_change and bool(report.changed)
    if json_out:
        print(json.dumps(report.to_dict(), indent=2))
        raise typer.Exit(1 if failed else 0)
    for warning in report.warnings:
        err.print(f"[yellow]warning:[/] {escape(warning)}")
    out.print(f"replayed {report.records} verdict{'s' * (report.records != 1)} recorded since "
              f"{start.isoformat(timespec='seconds')} with rules {report.digest} ({escape(report.rules_dir)})")
    for verdict in report.changed:
        before, after = verdict.before["outcome"], verdict.after["outcome"]
        proposal = verdict.proposal
        out.print(f"  seq {verdict.seq} · {escape(verdict.incident_id or '-')} · {escape(verdict.at)} · "
                  f"{escape(proposal['type'])} on {escape(proposal['target'])}: "
                  f"[{VERDICT_COLOUR.get(before, 'white')}]{before}[/] → [{VERDICT_COLOUR[after]}]{after}[/]")
        for line in verdict.why():
            out.print(f"      {escape(line)}")
    if report.rules_only:
        out.print(f"  {len(report.rules_only)} more verdict{'s' * (len(report.rules_only) != 1)} keep their outcome "
                  f"but match different rules (--json lists them)")
    changed = len(report.changed)
    out.print(f"{'[yellow]' if changed else '[green]'}{changed} verdict{'s' * (changed != 1)} would change[/], "
              f"{report.records - changed} would not")
    raise typer.Exit(1 if failed else 0)


# -- suggest --------------------------------------------------------------------------------------

_DONE = {"approve": "approved", "reject": "rejected", "expired": "expired"}


@rules_app.command("suggest")
def suggest(
    since: Annotated[Optional[str], typer.Option("--since", help="Only decisions recorded since this time: an ISO "
                     "date or date-time (UTC by default), or a duration ago such as 30d. Default: all.")] = None,
    minimum: Annotated[int, typer.Option("--min", min=1, help="How many times the same decision must have been "
                       "made, with no other decision, before a rule is suggested.")] = 5,
    rules_dir: Annotated[Optional[Path], typer.Option("--rules-dir", help="The rules directory (or guardrails "
                         "directory) the diffs are against (default: RTEM_RULES_DIR or the packaged rules).")] = None,
    topology: TopologyOpt = None,
    db: Annotated[Optional[Path], typer.Option("--db", help="The store with the audit log (default: "
                  "RTEM_DATA_DIR/rtem.db).")] = None,
    out_file: Annotated[Optional[Path], typer.Option("--out", help="Also write the diffs to this patch file.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Propose guardrail changes from repeated human decisions, as unified diffs with their evidence.

    The same action on the same kind of target (type and service) approved --min times and never
    rejected: narrow the guardrails that asked for approval. Rejected as often and never approved: add a
    deny rule. Nothing is applied; a change that would fail `rtem rules check` is not offered. Check a
    diff with `rtem rules check`, `rtem rules test` and `rtem rules replay` before applying it with
    `patch -p1 -d RULES_DIR`.
    """
    from datetime import datetime, timezone

    from rules import Topology, check_contracts, find_layout

    from ..audit import AuditLog
    from ..rules_replay import parse_since
    from ..rules_suggest import suggest as run_suggest

    cfg = settings()
    try:
        start = parse_since(since) if since is not None else None
    except ValueError:
        fail(f"--since {since!r}: give an ISO date or date-time, or a duration ago such as 24h or 7d")
    path = db or cfg.db_path
    if not path.is_file():
        fail(f"{path}: no store here (pass --db, or set RTEM_DATA_DIR)")
    target = _default_path(rules_dir)
    layout = find_layout(target)
    if not layout.guardrails:
        fail(f"{layout.root}: no guardrail files here (pass --rules-dir with a rules or guardrails directory)")
    files = {p.relative_to(layout.root).as_posix(): p.read_text("utf-8") for p in layout.guardrails}
    contracts, problems = check_contracts(layout.contracts)
    if problems:
        fail(f"the contracts do not load: {problems[0]} (run `rtem rules check`)", 1)
    # Without a topology, decisions group by exact target (which an unknown target does anyway).
    topo = topology_or_analyzed(cfg, topology, path, quiet=json_out) or Topology.from_dict({"entities": []})
    with AuditLog(path) as audit:
        records = [r for kind in ("action.verdict", "approval.decided", "action.approval")
                   for r in audit.records(kind=kind)]
    report = run_suggest(records, topo, files, contracts, now=datetime.now(timezone.utc), since=start,
                         minimum=minimum)
    if out_file is not None and report.suggestions:
        try:
            out_file.write_text(report.combined, "utf-8")
        except OSError as exc:
            fail(f"--out {out_file}: cannot write the patch ({exc.strerror}); pick a writable path")
    if json_out:
        print(json.dumps({**report.to_dict(), "rules_dir": str(layout.root),
                          "out": str(out_file) if out_file and report.suggestions else None}, indent=2))
        raise typer.Exit(0)
    for number, item in enumerate(report.suggestions, 1):
        what = "allow without approval" if item.change == "allow_without_approval" else "deny"
        counts = item.counts
        out.print(f"[bold]suggestion {number}[/]: {what}: {escape(item.kind.describe())} "
                  f"[dim]({', '.join(map(escape, item.files))})[/]")
        out.print(f"  why: {escape(item.why)}")
        out.print(f"  evidence: {counts['approved']} approved, {counts['rejected']} rejected, {counts['expired']} "
                  f"expired · decided by {escape(', '.join(item.deciders))}")
        for decision in item.evidence:
            out.print(f"    seq {decision.seq} · {decision.record_hash[:16]} · {escape(decision.incident_id or '-')} · "
                      f"{decision.at.isoformat(timespec='seconds')} · {_DONE[decision.decision.value]} by {escape(decision.by)} "
                      f"· {escape(decision.action)} on {escape(decision.target)}")
        print(item.diff, end="" if item.diff.endswith("\n") else "\n")  # plain: the diff must stay exact
    for note in report.notes:
        out.print(f"[dim]not suggested: {escape(note)}[/]")
    if not report.suggestions:
        window = f" since {start.isoformat(timespec='seconds')}" if start else ""
        out.print(f"nothing to suggest from {report.decisions} decision{'s' * (report.decisions != 1)}{window} "
                  f"(a rule needs {minimum} matching decisions and no other)")
        raise typer.Exit(0)
    root = escape(str(layout.root))
    out.print(f"{len(report.suggestions)} suggestion{'s' * (len(report.suggestions) != 1)} from {report.decisions} "
              f"decisions; nothing was changed."
              + (f" All of them, as one patch: {escape(str(out_file))}." if out_file is not None else ""))
    out.print(f"before applying one, on a copy of {root}: patch -p1 -d COPY < PATCH, then `rtem rules check COPY`, "
              f"`rtem rules test COPY` and `rtem rules replay --since 30d --rules COPY`")
    raise typer.Exit(0)
