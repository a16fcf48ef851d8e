"""Reading ``.gitlab-ci.yml``: YAML with ``!reference``, ``extends``, ``default:`` and jobs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from harness.errors import InputError, unknown_key_fix
from harness.pipeline_keywords import Image, Service, join_key, type_name
from harness.pipeline_rules import RefFilter, Rule, RuleReader
from harness.variables import Variable

DEFAULT_STAGES = ("build", "test", "deploy")
MAX_EXTENDS_DEPTH = 11  # GitLab's limit on extends nesting
MAX_REFERENCE_DEPTH = 10  # GitLab's limit on nested !reference tags
GLOBAL_KEYS = {"image", "services", "stages", "types", "variables", "default", "before_script",
               "after_script", "workflow", "include", "cache"}
INHERITABLE_KEYS = ("image", "services", "before_script", "after_script", "timeout")
JOB_KEYS = {"stage", "script", "only", "except", "rules", "when", "allow_failure", "variables",
            "extends", "inherit", "tags", *INHERITABLE_KEYS}
# GitLab keywords accepted and not compiled, each with a warning: the harness runs no artifacts,
# caches, DAG, retries, environments or releases.
IGNORED_JOB_KEYS = {"artifacts", "cache", "needs", "dependencies", "retry", "interruptible",
                    "environment", "coverage", "resource_group", "release", "pages", "secrets",
                    "id_tokens", "hooks", "parallel", "start_in", "identity", "dast_configuration",
                    "manual_confirmation"}
IGNORED_DEFAULT_KEYS = {"cache", "artifacts", "retry", "interruptible", "tags", "hooks", "id_tokens"}
IGNORED_GLOBAL_KEYS = {"cache"}
WORKFLOW_KEYS = {"rules", "name", "auto_cancel"}
INHERIT_KEYS = {"default", "variables"}


@dataclass(frozen=True)
class Job:
    """A visible job after ``extends``, ``default:`` and ``inherit:`` are applied.

    ``allow_failure`` None means unset, so the default can depend on how ``when`` was chosen.
    ``global_variables`` are the top-level variables this job inherits. ``image_key`` and
    ``services_key`` are the key paths the image and services were written under, such as
    ``build.image``, ``default.image`` or the top-level ``image``, so errors can point there.
    """

    name: str
    stage: str
    script: tuple[str, ...]
    before_script: tuple[str, ...] = ()
    after_script: tuple[str, ...] = ()
    image: Image | None = None
    services: tuple[Service, ...] = ()
    variables: tuple[Variable, ...] = ()
    global_variables: tuple[Variable, ...] = ()
    only: RefFilter | None = None
    except_: RefFilter | None = None
    rules: tuple[Rule, ...] | None = None
    when: str = "on_success"
    allow_failure: bool | None = None
    allow_failure_exit_codes: tuple[int, ...] = ()
    timeout: int | None = None
    image_key: str = ""
    services_key: str = ""

    @property
    def image_name(self) -> str:
        """The job image reference, empty when the runner's default image applies."""
        return self.image.name if self.image else ""

    @property
    def service_images(self) -> tuple[str, ...]:
        """The image references of the job's services, in order."""
        return tuple(service.name for service in self.services)


@dataclass(frozen=True)
class Pipeline:
    """A validated ``.gitlab-ci.yml``; ``stages`` include ``.pre`` first and ``.post`` last."""

    path: str
    stages: tuple[str, ...]
    variables: tuple[Variable, ...]
    jobs: tuple[Job, ...]
    workflow_rules: tuple[Rule, ...] | None = None
    warnings: tuple[str, ...] = ()


class _Reference:
    """A ``!reference [job, key, ...]`` tag, resolved after ``extends``."""

    def __init__(self, path: tuple[Any, ...], line: int) -> None:
        self.path = path
        self.line = line


# A few nested anchors can expand to billions of values (the "billion laughs" document), and
# reading them would not end. The bundled pipelines hold under 50 values each.
MAX_EXPANDED_VALUES = 100_000


class _Loader(yaml.SafeLoader):
    """SafeLoader that also accepts GitLab's ``!reference`` tag."""


def _construct_reference(loader: _Loader, node: yaml.Node) -> _Reference:
    if not isinstance(node, yaml.SequenceNode):
        raise yaml.constructor.ConstructorError(
            None, None, "!reference needs a list such as [.setup, script]", node.start_mark)
    return _Reference(tuple(loader.construct_sequence(node, deep=True)), node.start_mark.line + 1)


_Loader.add_constructor("!reference", _construct_reference)


def read_yaml(path: Path) -> dict[str, Any]:
    """Parse the file as YAML; raises InputError naming the line of a syntax error."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(str(path), "", "file not found",
                         "pass the path of the project's .gitlab-ci.yml") from None
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(str(path), "", f"cannot read the file: {error}",
                         "check the file permissions and that it is UTF-8 text") from error

    try:
        document = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"line {mark.line + 1}" if mark else ""
        problem = " ".join(part for part in (error.context, error.problem) if part)
        column = f" at column {mark.column + 1}" if mark else ""
        raise InputError(str(path), where, f"invalid YAML: {problem}{column}".replace("\n", " "),
                         "fix the indentation or quoting on that line") from error
    except yaml.YAMLError as error:
        raise InputError(str(path), "", f"invalid YAML: {error}".replace("\n", " "),
                         "fix the YAML syntax") from error

    if not isinstance(document, dict):
        raise InputError(str(path), "", "the file does not contain a mapping of jobs",
                         "define at least one job, for example `build: {script: [make]}`")
    check_expanded_size(document, str(path))
    return document


def check_expanded_size(document: Any, source: str) -> None:
    """Raise InputError when a parsed YAML document expands to more than ``MAX_EXPANDED_VALUES``."""
    if _expanded_size(document, {}) > MAX_EXPANDED_VALUES:
        raise InputError(source, "", f"the file expands to more than {MAX_EXPANDED_VALUES} values "
                         "through YAML anchors and aliases", "nest fewer aliases of aliases")


def _expanded_size(value: Any, sizes: dict[int, int]) -> int:
    """Return how many values ``value`` contains once every alias is expanded.

    An alias is one shared object in the parsed document, so sizes are kept by object id and
    the count costs one visit per distinct object, however far the aliases expand.
    """
    if not isinstance(value, (dict, list)):
        return 1
    if id(value) not in sizes:
        items = list(value.keys()) + list(value.values()) if isinstance(value, dict) else value
        sizes[id(value)] = 1 + sum(_expanded_size(item, sizes) for item in items)
    return sizes[id(value)]


class DocumentReader(RuleReader):
    """Validates a whole parsed file into a :class:`Pipeline`."""

    def read(self, document: dict[str, Any]) -> Pipeline:
        names = self._check_top_level(document)
        document = {name: self._extended(document, name, ()) for name in document}
        document = self._resolve(document, document, "", 0)

        stages = self._stages(document)
        global_variables = self._variables(document.get("variables"), "variables")
        defaults = self._defaults(document)
        workflow = self._workflow(document.get("workflow"))
        jobs = tuple(self._job(name, document[name], defaults, global_variables, stages)
                     for name in names)
        return Pipeline(self.file, stages, global_variables, jobs, workflow, tuple(self.warnings))

    def _check_top_level(self, document: dict[Any, Any]) -> list[str]:
        if "include" in document:
            self.fail("include", "include: is not supported by the harness",
                      "copy the included jobs into this file")
        for name in IGNORED_GLOBAL_KEYS & document.keys():
            self.warn(name, "is not compiled by the harness and has no effect")

        jobs = []
        for name, body in document.items():
            if not isinstance(name, str):
                self.fail(str(name), f"job name {name!r} is not a string", "quote the job name")
            if name in GLOBAL_KEYS or name.startswith("."):
                continue
            self._check_misspelled_global(name, body)
            if not isinstance(body, dict):
                self.fail(name, f"a job must be a mapping, got {type_name(body)}",
                          "indent script:, stage: ... under the job name, or start the name with '.'")
            jobs.append(name)

        if not jobs:
            self.fail("", "the file defines no visible job",
                      "add a job whose name does not start with '.'")
        return jobs

    def _check_misspelled_global(self, name: str, body: Any) -> None:
        """Raise InputError for a top-level key that reads as a misspelled global keyword.

        GitLab takes every other top-level key as a job, so ``stagse: [build]`` would otherwise
        be reported as a job without a script. A mapping with ``script:`` stays a job.
        """
        if isinstance(body, dict) and "script" in body:
            return
        # A stricter cutoff than for keys inside a job, because job names are free: "TestImage"
        # is 0.71 similar to "image".
        fix = unknown_key_fix(name, GLOBAL_KEYS, cutoff=0.8)
        if fix.startswith("did you mean"):
            self.fail(name, "unknown top-level key (a job would need script:)", fix)

    def _extended(self, document: dict[str, Any], name: str, chain: tuple[str, ...]) -> Any:
        """Return the job merged over its ``extends`` parents, GitLab's deep merge of mappings."""
        body = document[name]
        if name in GLOBAL_KEYS or not isinstance(body, dict) or "extends" not in body:
            return body

        key = f"{name}.extends"
        if len(chain) >= MAX_EXTENDS_DEPTH:
            self.fail(key, f"extends is nested deeper than {MAX_EXTENDS_DEPTH} levels",
                      "flatten the chain of templates")
        parents = body["extends"]
        parents = [parents] if isinstance(parents, str) else self.strings(parents, key)

        merged: dict[str, Any] = {}
        for parent in parents:
            if parent == name or parent in chain:
                self.fail(key, f'circular extends through "{parent}"', "remove one of the links")
            if parent not in document or parent in GLOBAL_KEYS:
                self.fail(key, f'unknown job "{parent}"', "define it or correct the name")
            if not isinstance(document[parent], dict):
                self.fail(key, f'"{parent}" is not a mapping', "extend a job or template mapping")
            merged = _deep_merge(merged, self._extended(document, parent, (*chain, name)))

        own = {field: value for field, value in body.items() if field != "extends"}
        return _deep_merge(merged, own)

    def _resolve(self, value: Any, document: dict[str, Any], key: str, depth: int) -> Any:
        """Replace every ``!reference`` by the value it points at."""
        if isinstance(value, _Reference):
            if depth >= MAX_REFERENCE_DEPTH:
                self.fail(key, f"!reference tags are nested deeper than {MAX_REFERENCE_DEPTH}",
                          "reference the final value directly")
            return self._resolve(self._lookup(value, document, key), document, key, depth + 1)
        if isinstance(value, dict):
            return {name: self._resolve(item, document, join_key(key, str(name)), depth)
                    for name, item in value.items()}
        if isinstance(value, list):
            return [self._resolve(item, document, f"{key}[{index}]", depth)
                    for index, item in enumerate(value)]
        return value

    def _lookup(self, reference: _Reference, document: dict[str, Any], key: str) -> Any:
        node: Any = document
        for part in reference.path:
            if not isinstance(node, dict) or part not in node:
                self.fail(key, f"!reference {list(reference.path)} on line {reference.line} "
                          f"points at nothing", "correct the job or key names in the tag")
            node = node[part]
        return node

    def _stages(self, document: dict[str, Any]) -> tuple[str, ...]:
        key = "stages" if "stages" in document else "types"
        raw = document.get(key)
        names = DEFAULT_STAGES if raw is None else self.strings(raw, key)
        middle = [name for name in dict.fromkeys(names) if name not in (".pre", ".post")]
        return (".pre", *middle, ".post")

    def _defaults(self, document: dict[str, Any]) -> dict[str, Any]:
        """Parse ``default:`` and the deprecated top-level image/services/scripts."""
        raw = document.get("default")
        sources = {name: (value, f"default.{name}")
                   for name, value in (self.mapping(raw, "default") if raw else {}).items()}
        self.check_keys(dict(sources), "default", INHERITABLE_KEYS, IGNORED_DEFAULT_KEYS)
        for name in list(sources):
            if name not in INHERITABLE_KEYS:
                del sources[name]

        for name in ("image", "services", "before_script", "after_script"):
            if name in document:
                if name in sources:
                    self.fail(name, f"{name} is set both at the top level and under default:",
                              f"keep only default.{name}")
                sources[name] = (document[name], name)
        self.default_keys = {name: path for name, (_, path) in sources.items()}
        return {name: self._keyword(name, value, path) for name, (value, path) in sources.items()}

    def _keyword(self, name: str, value: Any, key: str) -> Any:
        if name == "image":
            return self._image(value, key)
        if name == "services":
            return self._services(value, key)
        if name == "timeout":
            return self._timeout(value, key)
        # An empty before_script or after_script is how a job switches off the default one.
        return self._script(value, key, required=False)

    def _workflow(self, raw: Any) -> tuple[Rule, ...] | None:
        if raw is None:
            return None
        body = self.mapping(raw, "workflow")
        self.check_keys(body, "workflow", WORKFLOW_KEYS)
        if "rules" not in body:
            return None
        rules = self._rules(body["rules"], "workflow.rules")
        for index, rule in enumerate(rules):
            if rule.when not in (None, "always", "never"):
                self.fail(f"workflow.rules[{index}].when", f'"{rule.when}" is not allowed here',
                          "use always or never")
        return rules

    def _job(self, name: str, body: dict[str, Any], defaults: dict[str, Any],
             global_variables: tuple[Variable, ...], stages: tuple[str, ...]) -> Job:
        if "trigger" in body:
            self.fail(f"{name}.trigger", "trigger jobs are not supported by the harness",
                      "remove the job or replace trigger: with a script:")
        # Unknown keys first: a misspelt script: is reported with its suggestion, not as missing.
        self.check_keys(body, name, JOB_KEYS, IGNORED_JOB_KEYS)
        if "script" not in body:
            self.fail(f"{name}.script", "missing script", "add script: with at least one command")

        defaults, global_variables = self._inherit(name, body.get("inherit"), defaults,
                                                   global_variables)
        values = {field: self._keyword(field, body[field], f"{name}.{field}") if field in body
                  else defaults.get(field) for field in INHERITABLE_KEYS}
        stage = self.string(body.get("stage", "test"), f"{name}.stage")
        if stage not in stages:
            self.fail(f"{name}.stage", f'stage "{stage}" is not defined in stages '
                      f"({', '.join(stages)})", f'add "{stage}" to stages: or use a defined stage')
        if "rules" in body and ("only" in body or "except" in body):
            self.fail(f"{name}.rules", "rules cannot be used together with only or except",
                      "move the conditions into rules: and remove only:/except:")

        allow_failure, exit_codes = self._allow_failure(body.get("allow_failure"),
                                                        f"{name}.allow_failure")
        return Job(
            name=name, stage=stage, script=self._script(body["script"], f"{name}.script"),
            before_script=values["before_script"] or (), after_script=values["after_script"] or (),
            image=values["image"], services=values["services"] or (),
            variables=self._variables(body.get("variables"), f"{name}.variables"),
            global_variables=global_variables,
            only=self._ref_filter(body["only"], f"{name}.only") if "only" in body else None,
            except_=self._ref_filter(body["except"], f"{name}.except") if "except" in body else None,
            rules=self._rules(body["rules"], f"{name}.rules") if "rules" in body else None,
            when=self._when(body.get("when", "on_success"), f"{name}.when"),
            allow_failure=allow_failure, allow_failure_exit_codes=exit_codes,
            timeout=values["timeout"],
            image_key=f"{name}.image" if "image" in body else self.default_keys.get("image", ""),
            services_key=f"{name}.services" if "services" in body else self.default_keys.get("services", ""),
        )

    def _inherit(self, name: str, raw: Any, defaults: dict[str, Any],
                 global_variables: tuple[Variable, ...]) -> tuple[dict[str, Any], tuple[Variable, ...]]:
        """Apply ``inherit: default:`` and ``inherit: variables:`` (true, false or a list)."""
        if raw is None:
            return defaults, global_variables
        body = self.mapping(raw, f"{name}.inherit")
        self.check_keys(body, f"{name}.inherit", INHERIT_KEYS)

        kept_defaults = self._inherit_names(body.get("default", True), f"{name}.inherit.default")
        kept_variables = self._inherit_names(body.get("variables", True),
                                             f"{name}.inherit.variables")
        defaults = {field: value for field, value in defaults.items()
                    if kept_defaults is True or field in kept_defaults}
        global_variables = tuple(variable for variable in global_variables
                                 if kept_variables is True or variable.key in kept_variables)
        return defaults, global_variables

    def _inherit_names(self, raw: Any, key: str) -> bool | tuple[str, ...]:
        if isinstance(raw, bool):
            return True if raw else ()
        return self.strings(raw, key, "use true, false or a list of names")


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for name, value in override.items():
        if isinstance(merged.get(name), dict) and isinstance(value, dict):
            merged[name] = _deep_merge(merged[name], value)
        else:
            merged[name] = value
    return merged

