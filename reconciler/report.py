"""Reporters: results rendered as text, JSON, GitHub annotations, Markdown or JUnit XML."""

from __future__ import annotations

import json
from collections.abc import Sequence
from enum import StrEnum
from typing import Any, TextIO
from xml.etree import ElementTree

from reconciler.problems import Problem
from reconciler.tasks import TaskSet

FORMAT_VERSION = 1


class OutputFormat(StrEnum):
    TEXT = "text"
    JSON = "json"
    GITHUB = "github"
    MARKDOWN = "markdown"
    JUNIT = "junit"


def plural(count: int, word: str, many: str | None = None) -> str:
    return f"{count} {word if count == 1 else (many or word + 's')}"


def dump_json(document: dict[str, Any], out: TextIO) -> None:
    out.write(json.dumps(document, indent=2, ensure_ascii=False) + "\n")


def problem_json(problem: Problem) -> dict[str, Any]:
    return {
        "file": problem.file,
        "line": problem.line,
        "column": problem.column,
        "field": problem.field,
        "message": problem.message,
    }


# --- GitHub Actions workflow commands ------------------------------------------------------


def _gh_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _gh_property(text: str) -> str:
    return _gh_data(text).replace(":", "%3A").replace(",", "%2C")


def github_annotation(
    level: str,
    message: str,
    *,
    file: str | None = None,
    line: int | None = None,
    column: int | None = None,
    title: str | None = None,
) -> str:
    """One `::error file=…,line=…::message` line (level: error, warning or notice)."""
    properties = []
    if file is not None:
        properties.append(f"file={_gh_property(file)}")
    if line is not None:
        properties.append(f"line={line}")
    if column is not None:
        properties.append(f"col={column}")
    if title is not None:
        properties.append(f"title={_gh_property(title)}")
    joined = (" " + ",".join(properties)) if properties else ""
    return f"::{level}{joined}::{_gh_data(message)}"


def problem_annotation(problem: Problem, title: str) -> str:
    message = f"{problem.field}: {problem.message}" if problem.field else problem.message
    return github_annotation(
        "error", message, file=problem.file, line=problem.line, column=problem.column, title=title
    )


# --- validate ---------------------------------------------------------------------------------


def validate_summary(result: TaskSet) -> str:
    manifests = len(result.results)
    checked = f"Checked {plural(manifests, 'manifest')} in {plural(result.files, 'file')}"
    if result.ok:
        return f"{checked}: all valid."
    files = len({problem.file for problem in result.problems})
    return (
        f"{checked}: {plural(len(result.problems), 'problem')} in {plural(files, 'file')}; "
        f"{manifests - result.invalid} of {plural(manifests, 'manifest')} valid."
    )


def validate_report(
    result: TaskSet, fmt: OutputFormat, out: TextIO, *, verbose: bool = False
) -> None:
    if fmt is OutputFormat.JSON:
        dump_json(validate_json(result), out)
    elif fmt is OutputFormat.JUNIT:
        out.write(validate_junit(result))
    elif fmt is OutputFormat.GITHUB:
        for problem in result.problems:
            out.write(problem_annotation(problem, "reconciler validate") + "\n")
        out.write(validate_summary(result) + "\n")
    else:
        if verbose:
            for item in result.results:
                if item.valid:
                    out.write(f"{item.location}: ok {item.name} ({(item.hash or '')[:12]})\n")
        for problem in result.problems:
            out.write(f"{problem}\n")
        out.write(validate_summary(result) + "\n")


def validate_json(result: TaskSet) -> dict[str, Any]:
    """The documented `validate --format json` structure (schemas/output.schema.json)."""
    return {
        "formatVersion": FORMAT_VERSION,
        "command": "validate",
        "valid": result.ok,
        "summary": {
            "files": result.files,
            "manifests": len(result.results),
            "invalidManifests": result.invalid,
            "problems": len(result.problems),
        },
        "problems": [problem_json(problem) for problem in result.problems],
        "manifests": [
            {
                "file": item.location.file,
                "line": item.location.line,
                "column": item.location.column,
                "name": item.name,
                "hash": item.hash,
                "valid": item.valid,
            }
            for item in result.results
        ],
    }


def validate_junit(result: TaskSet) -> str:
    """One test case per manifest (and one per file that could not be read)."""
    suite = ElementTree.Element("testsuite", name="reconciler validate")
    failures = 0
    cases = 0
    per_manifest = {item.location: item for item in result.results}
    covered: set[Problem] = set()
    for item in per_manifest.values():
        cases += 1
        case = ElementTree.SubElement(
            suite,
            "testcase",
            classname=item.location.file,
            name=f"{item.name or 'manifest'} ({item.location})",
            file=item.location.file,
            line=str(item.location.line),
        )
        if item.problems:
            failures += 1
            covered.update(item.problems)
            _junit_failure(case, item.problems)
    loose: dict[str, list[Problem]] = {}
    for problem in result.problems:
        if problem not in covered:
            loose.setdefault(problem.file, []).append(problem)
    for file, problems in loose.items():
        cases += 1
        failures += 1
        case = ElementTree.SubElement(suite, "testcase", classname=file, name=file, file=file)
        _junit_failure(case, problems)
    suite.set("tests", str(cases))
    suite.set("failures", str(failures))
    suite.set("errors", "0")
    suites = ElementTree.Element("testsuites", name="reconciler", tests=str(cases))
    suites.set("failures", str(failures))
    suites.append(suite)
    ElementTree.indent(suites)
    return ElementTree.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"


def _junit_failure(case: ElementTree.Element, problems: Sequence[Problem]) -> None:
    failure = ElementTree.SubElement(
        case, "failure", message=problems[0].message, type="invalid manifest"
    )
    failure.text = "\n".join(str(problem) for problem in problems)
