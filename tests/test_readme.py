"""The README's tables against what they describe, so that neither goes
stale: the "## Configuration" table against the groups in conf/ and the
method registry, and the "## Methods" table against the registry and the
runs it is generated from (scripts/results_table.py --methods)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List

from ssl_runner.__main__ import config_dir
from ssl_runner.methods import METHODS
from ssl_runner.methods.registry import METHOD_INFO
from ssl_runner.report import find_summaries
from ssl_runner.seed_spread import methods_table

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CONF = Path(config_dir())
METHODS_RESULTS = ROOT / "docs" / "results" / "reproduce_cifar10_cpu"
REGENERATE = f"python scripts/results_table.py --methods {METHODS_RESULTS.relative_to(ROOT)}/"


def section(title: str) -> str:
    """The README's text from `## title` to the next `## ` heading."""
    text = README.read_text()
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", text, re.M | re.S)
    assert match, f"README.md has no '## {title}' section"
    return match.group(1)


def table_rows(text: str, first_header: str) -> List[List[str]]:
    """The cells of each body row of the first table whose header's first cell is `first_header`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(rf"\|\s*{re.escape(first_header)}\s*\|", line))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def listed_options(cell: str) -> List[str]:
    """The options a table cell names: the names in backticks outside
    parentheses and before the first `;` there (what follows is comment)."""
    names, depth, quoted, current = [], 0, False, ""
    for char in cell:
        if char == "`":
            if quoted and depth == 0:
                names.append(current)
            quoted, current = not quoted, ""
        elif quoted:
            current += char
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == ";" and depth == 0:
            break
    return names


def chosen_groups() -> Dict[str, List[str]]:
    """The truth: each group of conf/ with its options (its YAML files), but
    Hydra's own and those whose one option is `default` (settings, no choice)."""
    from ssl_runner.cli_help import INTERNAL_GROUPS  # hydra's own, and conf/expected (not a group)

    groups = {d.name: sorted(f.stem for f in d.glob("*.yaml")) for d in CONF.iterdir() if d.is_dir()}
    return {name: options for name, options in groups.items()
            if name not in INTERNAL_GROUPS and options and options != ["default"]}


def readme_groups() -> Dict[str, List[str]]:
    rows = table_rows(section("Configuration"), "group")
    groups = {row[0].strip("`"): listed_options(row[1]) for row in rows}
    assert len(groups) == len(rows), f"a group has two rows: {[row[0] for row in rows]}"
    return groups


def test_the_option_parser_reads_names_outside_parentheses_and_before_a_semicolon():
    cell = "`a` (with `x`, (nested `y`)), `b`; any list via `c`"
    assert listed_options(cell) == ["a", "b"]


def test_configuration_table_lists_every_chosen_group_with_exactly_its_options():
    truth, readme = chosen_groups(), readme_groups()
    assert sorted(readme) == sorted(truth), (
        f"groups missing from the README's configuration table: {sorted(set(truth) - set(readme))}; "
        f"rows for no such group: {sorted(set(readme) - set(truth))}")
    wrong = {group: {"missing": sorted(set(truth[group]) - set(readme[group])),
                     "not in conf/": sorted(set(readme[group]) - set(truth[group]))}
             for group in truth if sorted(readme[group]) != truth[group]}
    assert not wrong, f"the README's configuration table disagrees with conf/<group>/*.yaml: {wrong}"


def test_configuration_table_lists_exactly_the_registered_methods():
    listed = readme_groups()["method"]
    assert sorted(listed) == sorted(METHODS), (
        f"registered but not in the README's method row: {sorted(set(METHODS) - set(listed))}; "
        f"in the row but not registered: {sorted(set(listed) - set(METHODS))}")


def _methods_table_names() -> List[str]:
    return [row[0].strip("`") for row in table_rows(section("Methods"), "method")]


def test_methods_table_lists_every_registered_method():
    listed = _methods_table_names()
    missing = [name for name in METHOD_INFO if name not in listed]
    assert not missing, (f"methods missing from the README's methods table: {', '.join(missing)} "
                         f"(regenerate it: {REGENERATE}; a method without a run there gets dashes)")
    assert len(listed) == len(set(listed)) and set(listed) == set(METHOD_INFO), listed


def test_methods_table_is_the_one_its_script_generates():
    generated = methods_table(find_summaries([METHODS_RESULTS]), METHOD_INFO)
    assert generated in README.read_text(), (
        f"the README's methods table differs from what `{REGENERATE}` prints (the registry's papers and "
        f"published figures, or a run's summary.json, changed): paste its output into '## Methods'")


def test_tables_said_to_be_generated_from_a_results_folder_are_what_the_script_prints():
    """A README table right after the paragraph that names `python scripts/results_table.py FOLDER` must be that
    command's table: until 2026-12-07 the LooC rotation experiment showed the cifar10_cpu
    table under its own folder's command, after a regeneration replaced the wrong table."""
    from ssl_runner.report import markdown_table

    text = README.read_text()
    checked = 0
    for match in re.finditer(r"`python\s+scripts/results_table\.py\s+(docs/results/[\w/]+?)/?`(?:[^\n]|\n(?!\n))*\n\n(\|[^\n]*\n)", text):
        generated = markdown_table(find_summaries([ROOT / match.group(1)]))
        start = match.start(2)
        shown = text[start:text.index("\n\n", start)]
        assert shown == generated.split("\n\n")[0].rstrip("\n"), (
            f"the table after `python scripts/results_table.py {match.group(1)}/` is not what it prints: paste its output")
        checked += 1
    assert checked >= 2  # the LooC rotation table and the Results section


def test_reproduce_tables_in_the_readme_are_the_published_ones():
    """The README pastes each published `reproduce.md` (heading line and table); a rerun of the reproduce
    command that republishes must not leave the README showing the old verdicts."""
    text = README.read_text()
    checked = []
    for match in re.finditer(r"^Reproduce `experiment=(\w+)`", text, re.MULTILINE):
        heading_end = text.index("\n\n", match.start())
        shown = text[match.start():text.index("\n\n", heading_end + 2)]
        published = ROOT / "docs" / "results" / f"reproduce_{match.group(1)}" / "reproduce.md"
        assert shown == published.read_text().strip("\n"), (
            f"the README's reproduce table for {match.group(1)} differs from {published.relative_to(ROOT)}: paste it")
        checked.append(match.group(1))
    assert checked == ["smoke", "cifar10_cpu"]
