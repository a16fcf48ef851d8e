"""``rules:``, ``workflow:rules:`` and ``only``/``except``: parsing and evaluation.

Evaluation follows a branch push pipeline on GitLab: ``CI_PIPELINE_SOURCE`` is ``push``, so the
``branches`` and ``pushes`` keywords match and ``tags``, ``schedules``, ``web`` ... do not.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from harness.pipeline_keywords import KeywordReader
from harness.project import Project
from harness.variables import Expression, ExpressionError, Variable, parse_expression

RULE_KEYS = {"if", "exists", "changes", "when", "allow_failure", "variables"}
# Accepted in rules but not compiled: the harness runs no DAG, no delayed jobs and no cancelling.
IGNORED_RULE_KEYS = {"needs", "start_in", "interruptible"}
# Accepted under exists: and changes: but not compiled: the harness compares against no other ref.
IGNORED_PATHS_KEYS = {"compare_to", "project", "ref"}
# The only/except keywords and whether a branch push pipeline matches each.
REF_KEYWORDS = {"branches": True, "pushes": True, "tags": False, "api": False, "external": False,
                "pipelines": False, "schedules": False, "triggers": False, "web": False,
                "merge_requests": False, "external_pull_requests": False, "chat": False}
_REGEX_LITERAL = re.compile(r"/(.+)/([imsU]*)", re.DOTALL)


@dataclass(frozen=True)
class Rule:
    """One ``rules:`` or ``workflow:rules:`` entry; ``changes`` None means no changes clause."""

    condition: Expression | None = None
    exists: tuple[str, ...] = ()
    changes: tuple[str, ...] | None = None
    when: str | None = None
    allow_failure: bool | None = None
    variables: tuple[Variable, ...] = ()


@dataclass(frozen=True)
class RefFilter:
    """An ``only:`` or ``except:`` clause; a None part places no condition."""

    refs: tuple[str, ...] | None = None
    variables: tuple[Expression, ...] = ()
    changes: tuple[str, ...] | None = None


class RuleReader(KeywordReader):
    """Adds the parsers of ``rules:``, ``only:`` and ``except:``."""

    def _rules(self, raw: Any, key: str) -> tuple[Rule, ...]:
        return tuple(self._rule(item, f"{key}[{index}]")
                     for index, item in enumerate(self.list(raw, key, "write rules: as a list")))

    def _rule(self, raw: Any, key: str) -> Rule:
        body = self.mapping(raw, key, "write each rule as a mapping such as {if: '$X == \"y\"'}")
        self.check_keys(body, key, RULE_KEYS, IGNORED_RULE_KEYS)
        allow_failure = None
        if "allow_failure" in body:
            allow_failure = self.boolean(body["allow_failure"], f"{key}.allow_failure")
        return Rule(
            condition=self._expression(body["if"], f"{key}.if") if "if" in body else None,
            exists=self._paths(body["exists"], f"{key}.exists") if "exists" in body else (),
            changes=self._paths(body["changes"], f"{key}.changes") if "changes" in body else None,
            when=self._when(body["when"], f"{key}.when") if "when" in body else None,
            allow_failure=allow_failure,
            variables=self._variables(body.get("variables"), f"{key}.variables"),
        )

    def _expression(self, raw: Any, key: str) -> Expression:
        try:
            return parse_expression(self.string(raw, key))
        except ExpressionError as error:
            self.fail(key, f"invalid expression {raw!r}: {error}",
                      'write it like $CI_COMMIT_BRANCH == "main" && $VAR =~ /^v/')

    def _paths(self, raw: Any, key: str) -> tuple[str, ...]:
        """Parse the file globs of ``exists:`` or ``changes:`` (a list or ``{paths: [...]}``)."""
        if isinstance(raw, dict):
            self.check_keys(raw, key, {"paths"}, IGNORED_PATHS_KEYS)
            raw, key = raw.get("paths", []), f"{key}.paths"
        return (raw,) if isinstance(raw, str) else self.strings(raw, key)

    def _ref_filter(self, raw: Any, key: str) -> RefFilter:
        if isinstance(raw, (str, list)):
            return RefFilter(refs=self._refs(raw, key))
        body = self.mapping(raw, key, "write a list of branch names or {refs: [...]}")
        self.check_keys(body, key, {"refs", "variables", "changes"}, {"kubernetes"})
        variables = tuple(self._expression(item, f"{key}.variables[{index}]") for index, item
                          in enumerate(self.list(body.get("variables", []), f"{key}.variables")))
        return RefFilter(
            refs=self._refs(body["refs"], f"{key}.refs") if "refs" in body else None,
            variables=variables,
            changes=self._paths(body["changes"], f"{key}.changes") if "changes" in body else None,
        )

    def _refs(self, raw: Any, key: str) -> tuple[str, ...]:
        refs = (raw,) if isinstance(raw, str) else self.strings(raw, key)
        for index, ref in enumerate(refs):
            try:
                ref_regex(ref)
            except re.error as error:
                self.fail(f"{key}[{index}]", f"invalid regular expression {ref}: {error}",
                          "fix the pattern between the slashes")
        return refs


def ref_regex(pattern: str) -> re.Pattern[str] | None:
    """Compile an ``only``/``except`` entry written as ``/regex/flags``; None for a plain name."""
    match = _REGEX_LITERAL.fullmatch(pattern)
    if not match:
        return None
    flags = re.IGNORECASE if "i" in match[2] else 0
    return re.compile(match[1], flags)



def rule_matches(rule: Rule, environment: dict[str, str], project: Project) -> bool:
    if rule.condition is not None and not rule.condition.evaluate(environment):
        return False
    if rule.exists and not any_path_matches(project.list_files(), rule.exists):
        return False
    if rule.changes is not None and not changes_match(project, rule.changes):
        return False
    return True


def filter_matches(refs_filter: RefFilter, environment: dict[str, str], project: Project) -> bool:
    """Return whether every part of an only/except clause has at least one match."""
    if refs_filter.refs is not None and not any(
            ref_matches(pattern, project) for pattern in refs_filter.refs):
        return False
    if refs_filter.variables and not any(
            expression.evaluate(environment) for expression in refs_filter.variables):
        return False
    if refs_filter.changes is not None and not changes_match(project, refs_filter.changes):
        return False
    return True


def ref_matches(pattern: str, project: Project) -> bool:
    if pattern in REF_KEYWORDS:
        return REF_KEYWORDS[pattern]
    if "@" in pattern and not pattern.startswith("/"):
        path, _, pattern = pattern.partition("@")
        if path != project.path:
            return False
    regex = ref_regex(pattern)
    return bool(regex.search(project.ref)) if regex else pattern == project.ref


def changes_match(project: Project, patterns: tuple[str, ...]) -> bool:
    changed = project.changed_files()
    # A branch's first push has nothing to compare with, and GitLab then treats changes as true.
    return changed is None or any_path_matches(changed, patterns)


def any_path_matches(paths: list[str], patterns: tuple[str, ...]) -> bool:
    regexes = [glob_regex(pattern) for pattern in patterns]
    return any(regex.fullmatch(path) for regex in regexes for path in paths)


def glob_regex(pattern: str) -> re.Pattern[str]:
    """Translate a GitLab file glob: ``**`` crosses directories, ``*`` does not, ``{a,b}``."""
    parts, index = [], 0
    while index < len(pattern):
        if pattern.startswith("**/", index):
            parts.append("(?:.*/)?")
            index += 3
            continue
        char = pattern[index]
        if pattern.startswith("**", index):
            parts.append(".*")
            index += 1
        elif char == "*":
            parts.append("[^/]*")
        elif char == "?":
            parts.append("[^/]")
        elif char == "{" and "}" in pattern[index:]:
            end = pattern.index("}", index)
            choices = pattern[index + 1:end].split(",")
            parts.append("(?:" + "|".join(re.escape(choice) for choice in choices) + ")")
            index = end
        else:
            parts.append(re.escape(char))
        index += 1
    return re.compile("".join(parts))

