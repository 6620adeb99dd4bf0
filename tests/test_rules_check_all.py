"""`rtem rules check` reports every problem of a file in one run, each at file:line:column with the
offending key and a suggestion (issue 15, "Rule authoring"); the hot reload still refuses such a file
and keeps the rules in force."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent.cli import app
from agent.rules_reload import RulesReloader
from rules._check import packaged_rules_dir
from rules._schema_errors import did_you_mean

runner = CliRunner()
PACKAGED = packaged_rules_dir()
FIELDS = {"file", "line", "column", "key", "message", "suggestion"}


def rules_dir(tmp_path: Path, guardrails: dict[str, str], detect: dict[str, str] | None = None) -> Path:
    root = tmp_path / "rules"
    (root / "guardrails").mkdir(parents=True)
    shutil.copytree(PACKAGED / "contracts", root / "contracts")
    for name, text in guardrails.items():
        (root / "guardrails" / name).write_text(text, "utf-8")
    if detect is not None:
        (root / "detect").mkdir()
        for name, text in detect.items():
            (root / "detect" / name).write_text(text, "utf-8")
    return root


def check(path: Path) -> tuple[int, list[dict], str]:
    """Exit code, the JSON findings, and the text output of one `rtem rules check` run each."""
    data = runner.invoke(app, ["rules", "check", str(path), "--json"])
    text = runner.invoke(app, ["rules", "check", str(path)])
    assert data.exit_code == text.exit_code
    return data.exit_code, json.loads(data.stdout)["findings"], text.stdout


def at(text: str, line: int, needle: str) -> tuple[int, int]:
    """(line, column) of `needle` on 1-based `line` of `text`."""
    return line, text.splitlines()[line - 1].index(needle) + 1


# -- one rule, three problems: one run ---------------------------------------------------------------

NIGHT = """\
version: 1
rules:
  - id: night-freeze
    match: {action: restart_instance}
    during:
      - {from: 22:00, to: '06:00', timezone: Europe/Berlinn}
    outcom: deny
    reason: No restarts at night.
"""


def test_a_rule_with_an_unquoted_time_a_bad_zone_and_a_typo_shows_all_three_at_once(tmp_path):
    code, found, text = check(rules_dir(tmp_path, {"night.yaml": NIGHT}))
    assert code == 1
    assert [(f["line"], f["column"], f["key"]) for f in found] == [
        (*at(NIGHT, 6, "from"), "from"), (*at(NIGHT, 6, "timezone"), "timezone"), (*at(NIGHT, 7, "outcom"), "outcom")]
    unquoted, zone, typo = found
    assert "not a time of day" in unquoted["message"] and "'22:00'" in unquoted["suggestion"]
    assert "unknown time zone 'Europe/Berlinn'" in zone["message"]
    assert "did you mean 'Europe/Berlin'?" in zone["suggestion"]
    assert "unknown field 'outcom'" in typo["message"] and "did you mean 'outcome'?" in typo["suggestion"]
    # the typo explains the missing outcome: not reported a second time as a bare "required property"
    assert not any("required property" in f["message"] for f in found)
    assert "3 errors" in text and f"night.yaml:{typo['line']}:{typo['column']}: error[unknown_field]" in text
    assert "suggestion: did you mean 'outcome'?" in text


# -- each case on its own ----------------------------------------------------------------------------

def test_an_unknown_match_field_gets_did_you_mean(tmp_path):
    text = ("version: 1\nrules:\n  - id: a\n    match: {action: restart_instance, target_servce: payments}\n"
            "    outcome: deny\n    reason: r\n")
    code, [finding], _ = check(rules_dir(tmp_path, {"a.yaml": text}))
    assert code == 1 and finding["kind"] == "unknown_field"
    assert (finding["line"], finding["column"]) == at(text, 4, "target_servce") and finding["key"] == "target_servce"
    assert finding["suggestion"].startswith("did you mean 'target_service'?")


def test_a_missing_required_key_without_a_typo_names_the_key(tmp_path):
    text = "version: 1\nrules:\n  - id: a\n    match: {action: scale_out}\n"
    code, found, _ = check(rules_dir(tmp_path, {"a.yaml": text}))
    assert code == 1 and [f["key"] for f in found] == ["outcome", "reason"]  # both, at the same place
    for finding in found:
        assert f"'{finding['key']}' is a required property" in finding["message"]
        assert (finding["line"], finding["column"]) == at(text, 3, "id")
        assert f"add {finding['key']}:" in finding["suggestion"]


def test_a_misspelt_value_and_operator_get_did_you_mean(tmp_path):
    text = ("version: 1\nrules:\n  - id: a\n    match: {target_tier: {gtee: 1}}\n    outcome: denny\n"
            "    reason: r\n")
    code, found, _ = check(rules_dir(tmp_path, {"a.yaml": text}))
    assert code == 1
    assert [(f["line"], f["column"], f["key"], f["suggestion"].split("?")[0]) for f in found] == [
        (*at(text, 4, "gtee"), "gtee", "did you mean 'gte'"), (*at(text, 5, "outcome"), "outcome", "did you mean 'deny'")]


def test_a_threshold_typo_names_the_unknown_key_not_only_the_missing_one(tmp_path):
    detect = "version: 1\ndetections:\n  - id: x\n    match: {type: rtem.log}\n    threshold: {cont: 5, window: 1m}\n"
    root = rules_dir(tmp_path, {"a.yaml": "version: 1\nrules: []\n"}, {"d.yaml": detect})
    code, [finding], _ = check(root)
    assert code == 1 and finding["kind"] == "detection" and finding["key"] == "cont"
    assert (finding["line"], finding["column"]) == at(detect, 5, "cont")
    assert finding["message"] == "unknown field 'cont'" and "did you mean 'count'?" in finding["suggestion"]


SYNTAX = {
    "an unquoted colon": ("version: 1\nrules:\n  - id: a\n    reason: deny: always\n    outcome: deny\n",
                          4, ": always", "reason", "must be quoted"),
    "an unclosed brace": ("version: 1\nrules:\n  - id: a\n    match: {action: scale_out\n    outcome: deny\n"
                          "    reason: r\n", 5, ":", "outcome", "it opens at line 4"),
    "uneven indentation": ("version: 1\nrules:\n  - id: a\n    outcome: deny\n   reason: r\n",
                           5, "reason", "reason", "indented differently"),
    "a tab": ("version: 1\nrules:\n  - id: a\n\toutcome: deny\n", 4, "\t", "outcome", "not tabs"),
    "an unclosed quote": ("version: 1\nrules:\n  - id: a\n    reason: 'r\n    outcome: deny\n",
                          4, "'r", "reason", "never closed"),
}


@pytest.mark.parametrize("name", SYNTAX)
def test_yaml_syntax_errors_come_with_a_hint_at_their_place(tmp_path, name):
    text, line, needle, key, hint = SYNTAX[name]
    code, [finding], out = check(rules_dir(tmp_path, {"a.yaml": text}))
    assert code == 1 and finding["kind"] == "yaml_syntax" and finding["message"].startswith("YAML syntax:")
    assert (finding["line"], finding["column"]) == at(text, line, needle)
    assert finding["key"] == key and hint in finding["suggestion"]
    assert "suggestion:" in out


def test_json_findings_carry_file_line_column_key_message_and_suggestion(tmp_path):
    root = rules_dir(tmp_path, {"night.yaml": NIGHT})
    _, found, _ = check(root)
    assert len(found) == 3
    for finding in found:
        assert FIELDS <= set(finding), finding
        assert finding["file"] == str(root / "guardrails" / "night.yaml") and finding["suggestion"]


def test_did_you_mean_picks_the_closest_name_or_none():
    assert did_you_mean("target_servce", ["target", "target_service", "target_type"]) == "target_service"
    assert did_you_mean("OUTCOM", ["outcome", "reason"]) == "outcome"
    assert did_you_mean("colour", ["id", "outcome"]) is None and did_you_mean(3, ["3"]) is None


# -- many problems, many rules, several files: one run ------------------------------------------------

A = """\
version: 1
rules:
  - id: ok-rule
    match: {action: scale_out}
    outcome: deny
    reason: r
  - id: freeze
    match: {action: restart_instance, target_servce: cart}
    during: [{from: 22:00, to: 23:00, timezone: Mars/Olympus}]
    outcom: deny
    reason: r
  - id: capped
    match: {action: drain_host}
    cap: {percent: 50, windw: 1h}
    limit: {max: 1, window: forever}
    outcome: require_approval
    approver_role: sre
    reason: r
"""
B = """\
version: 1
rules:
  - id: ok-rule
    match: {action: shed_load}
    outcome: allow
    reason: r
  - id: bad-days
    match: {action: {in: [scale_out, restart_instanse]}}
    outside: [{days: [mon, tuesday]}]
    outcome: deny
    reason: r
"""
D = """\
version: 1
detections:
  - id: errors
    match: {severity: {gtt: 3}}
    threshold: {cont: 5, window: 5 minutes}
"""


def test_several_problems_in_several_rules_and_files_in_one_run(tmp_path):
    root = rules_dir(tmp_path, {"a.yaml": A, "b.yaml": B}, {"d.yaml": D})
    code, found, text = check(root)
    assert code == 1
    got = sorted((Path(f["file"]).name, f["line"], f["column"], f["key"]) for f in found)
    assert got == [
        ("a.yaml", *at(A, 8, "target_servce"), "target_servce"),
        ("a.yaml", *at(A, 9, "from"), "from"), ("a.yaml", *at(A, 9, "to:"), "to"),
        ("a.yaml", *at(A, 9, "timezone"), "timezone"),
        ("a.yaml", *at(A, 10, "outcom"), "outcom"),
        ("a.yaml", *at(A, 14, "windw"), "windw"),
        ("a.yaml", *at(A, 15, "window"), "window"),
        ("b.yaml", *at(B, 3, "id"), "id"),
        ("b.yaml", *at(B, 8, "restart_instanse"), "action"),
        ("b.yaml", *at(B, 9, "tuesday"), "days"),
        ("d.yaml", *at(D, 4, "gtt"), "gtt"),
        ("d.yaml", *at(D, 5, "cont"), "cont"),
        ("d.yaml", *at(D, 5, "window"), "window"),
    ], json.dumps(found, indent=1)
    by_key = {f["key"]: f for f in found}
    assert "did you mean 'window'?" in by_key["windw"]["suggestion"]
    assert "duplicate rule id 'ok-rule'" in by_key["id"]["message"] and "a.yaml:3" in by_key["id"]["suggestion"]
    assert "did you mean 'tue'?" in by_key["days"]["suggestion"]
    assert "did you mean 'gt'?" in by_key["gtt"]["suggestion"]
    # a rule refused for its days still has its match analysed: the unknown action shows in this run too
    assert "unknown action type 'restart_instanse'" in by_key["action"]["message"]
    assert "did you mean 'restart_instance'?" in by_key["action"]["suggestion"]
    assert "13 errors" in text
    # the good rule of a.yaml still loads; b.yaml's ok-rule is a duplicate id
    assert json.loads(runner.invoke(app, ["rules", "check", str(root), "--json"]).stdout)["counts"]["guardrails"] == 1


# -- the reload path ---------------------------------------------------------------------------------

def test_the_reload_refuses_a_file_with_many_problems_and_keeps_the_rules_in_force(tmp_path):
    root = tmp_path / "rules"
    for kind in ("guardrails", "contracts", "detect"):
        shutil.copytree(PACKAGED / kind, root / kind)
    reloader = RulesReloader(root)
    active = reloader.current()
    bad = root / "guardrails" / "night.yaml"
    bad.write_text(NIGHT, "utf-8")
    stamp = bad.stat().st_mtime_ns + 2_000_000_000
    os.utime(bad, ns=(stamp, stamp))
    result = reloader.check_now()
    assert result.status == "refused" and reloader.current() is active
    assert [(Path(e.file).name, e.line, e.key) for e in result.errors] == [
        ("night.yaml", 6, "from"), ("night.yaml", 6, "timezone"), ("night.yaml", 7, "outcom")]


# -- more of the same, in other files ----------------------------------------------------------------

def test_a_key_written_twice_is_reported_at_the_second(tmp_path):
    text = ("version: 1\nrules:\n  - id: a\n    match: {action: scale_out}\n    outcome: allow\n    reason: r\n"
            "    outcome: deny\n")
    code, [finding], _ = check(rules_dir(tmp_path, {"a.yaml": text}))
    assert code == 1 and finding["kind"] == "duplicate_key" and finding["key"] == "outcome"
    assert (finding["line"], finding["column"]) == at(text, 7, "outcome") and "line 5" in finding["suggestion"]


def test_a_misspelt_version_line_gets_did_you_mean(tmp_path):
    code, [finding], _ = check(rules_dir(tmp_path, {"a.yaml": "versoin: 1\nrules: []\n"}))
    assert code == 1 and finding["key"] == "versoin" and "did you mean 'version'?" in finding["suggestion"]


def test_a_contract_reports_all_its_schema_problems_at_once(tmp_path):
    root = rules_dir(tmp_path, {"a.yaml": "version: 1\nrules: []\n"})
    path = root / "contracts" / "scale_out.json"
    doc = json.loads(path.read_text())
    doc["x-rtem"]["riks"] = doc["x-rtem"].pop("risk")
    doc["x-rtem"]["colour"] = "red"
    doc["x-rtem"]["timeout_s"] = "soon"
    path.write_text(json.dumps(doc, indent=2))
    code, found, _ = check(root)
    text = path.read_text()
    line_of = {key: next(i for i, line in enumerate(text.splitlines(), 1) if f'"{key}"' in line)
               for key in ("riks", "colour", "timeout_s")}
    assert code == 1
    assert sorted((f["key"], f["line"]) for f in found) == sorted(line_of.items())
    by_key = {f["key"]: f for f in found}
    assert "did you mean 'risk'?" in by_key["riks"]["suggestion"] and by_key["riks"]["kind"] == "unknown_field"
    assert not any("'risk' is a required property" in f["message"] for f in found)
    assert "did you mean" not in by_key["colour"]["suggestion"] and "allowed here:" in by_key["colour"]["suggestion"]


def test_the_text_output_names_the_key_when_the_message_does_not(tmp_path):
    detect = "version: 1\ndetections:\n  - id: x\n    match: {type: a}\n    threshold: {count: 5, window: 5 minutes}\n"
    root = rules_dir(tmp_path, {"a.yaml": "version: 1\nrules: []\n"}, {"d.yaml": detect})
    code, [finding], text = check(root)
    place = at(detect, 5, "window")
    assert code == 1 and (finding["line"], finding["column"]) == place
    assert f"d.yaml:{place[0]}:{place[1]}: error[detection] window: '5 minutes' is not valid here" in text


def test_an_escape_past_the_last_unicode_character_is_a_problem_at_its_place_not_a_crash(tmp_path):
    """PyYAML's scanner raises a bare ValueError (from chr) for "\\U00110000": found by the fuzzing suite, which
    saw load_guardrails crash instead of refusing the file at a line."""
    from rules import RulesError, load_guardrails

    rules = tmp_path / "guardrails"
    rules.mkdir()
    (rules / "a.yaml").write_text('version: 1\nrules:\n  - id: "\\U00110000"\n')
    with pytest.raises(RulesError) as refused:
        load_guardrails(rules)
    assert (refused.value.line, refused.value.column) == (3, 12) and "no character" in str(refused.value)  # at its digits


def test_a_scalar_pyyaml_cannot_build_is_a_problem_at_its_place_not_a_crash(tmp_path):
    """A timestamp with a day's offset is valid YAML that PyYAML cannot turn into a datetime (ValueError):
    found by the fuzzing suite; `rules check` crashed with a traceback while guessing the file's kind."""
    from rules._check import check_rules

    rules = tmp_path / "guardrails"
    rules.mkdir()
    (rules / "a.yaml").write_text("version: 1\nrules:\n  - id: x\n    description: 2001-12-14t21:59:43.10-24:00\n"
                                  "    match: {action: restart_instance}\n    outcome: deny\n    reason: r\n")
    report = check_rules(rules)
    [finding] = [f for f in report.findings if f.severity == "error"]
    assert (finding.line, finding.column) == (4, 18) and "not a valid timestamp" in finding.message
