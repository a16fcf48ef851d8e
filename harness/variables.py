"""CI/CD variables: the payload entry, secret masking and GitLab's variable expressions.

Variable expressions are what ``rules:if``, ``only:variables`` and ``workflow:rules:if`` hold:
``$VAR == "x"``, ``!=``, ``=~ /re/``, ``!~``, ``&&``, ``||``, parentheses, ``null`` and a bare
``$VAR`` that is true when the variable is set and not empty. GitLab evaluates them on the server,
so the compiler does too; nothing else in a job is expanded here because the runner expands.
"""

from __future__ import annotations

import base64
import re
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from harness.project import Project

MASK = "[MASKED]"
# Stand-in values for the fake GitLab server. No real GitLab runs at this host.
SERVER_VERSION = "17.0.0"
JOB_TOKEN_USER = "gitlab-ci-token"


@dataclass(frozen=True)
class Variable:
    """One entry of a job payload's ``variables`` list.

    The defaults describe a project CI/CD settings variable (``public`` false), which is what a
    user-supplied variable stands for. ``raw`` stops the runner from expanding ``$`` references.
    """

    key: str
    value: str
    masked: bool = False
    public: bool = False
    file: bool = False
    raw: bool = False

    def to_payload(self) -> dict[str, Any]:
        """Return the JSON object GitLab sends a runner for this variable."""
        return asdict(self)

    @classmethod
    def from_payload(cls, data: Mapping[str, Any]) -> Variable:
        """Build a variable from a payload object; a missing flag is false, as the runner reads it."""
        return cls(
            key=str(data["key"]),
            value=str(data.get("value", "")),
            masked=bool(data.get("masked", False)),
            public=bool(data.get("public", False)),
            file=bool(data.get("file", False)),
            raw=bool(data.get("raw", False)),
        )


def masked_values(variables: Iterable[Variable | Mapping[str, Any]]) -> list[str]:
    """Return the values of the masked variables, ready to pass to :func:`mask`."""
    values = []
    for variable in variables:
        if isinstance(variable, Mapping):
            variable = Variable.from_payload(variable)
        if variable.masked and variable.value:
            values.append(variable.value)
    return values


def mask(text: str, secrets: Iterable[str]) -> str:
    """Replace every secret in ``text`` with ``[MASKED]``.

    Each secret is also replaced in its percent-encoded form and in base64, the shapes a secret
    takes in URLs and registry auth files. Base64 is matched at every byte offset, so the password
    inside ``base64("user:password")`` (a ``docker login`` auth entry) is masked as well. There
    at most two characters on each side of ``[MASKED]`` remain, and they encode bits of the
    neighbouring bytes.
    """
    forms: set[str] = set()
    for secret in secrets:
        if not secret:
            continue
        forms.update({secret, urllib.parse.quote(secret, safe=""), *_base64_forms(secret.encode())})

    # Replace longer forms first, so a secret inside a longer one cannot leave part of it visible.
    for form in sorted(forms, key=len, reverse=True):
        text = text.replace(form, MASK)
    return text


def _base64_forms(secret: bytes) -> set[str]:
    """Return the base64 text of ``secret`` on its own and embedded at byte offsets 1 and 2.

    Base64 encodes 3 bytes as 4 characters, so the characters of an embedded secret depend on
    its offset modulo 3. Characters that also carry bits of the bytes around it are cut off.
    """
    encoded = base64.b64encode(secret).decode()
    forms = {encoded, encoded.rstrip("=")}
    for offset in (0, 1, 2):
        shifted = base64.b64encode(bytes(offset) + secret).decode()
        # The first character made only of secret bits, and the end of the last such character.
        start = -(-offset * 8 // 6)
        end = (offset + len(secret)) * 8 // 6
        inner = shifted[start:end]
        # Fewer than 8 characters (a secret of 6 bytes or less) would match unrelated text.
        if len(inner) >= 8:
            forms.add(inner)
    return forms


def slugify(text: str) -> str:
    """Return GitLab's slug of ``text``: lowercase, ``[a-z0-9-]`` only, at most 63 characters."""
    slug = re.sub(r"[^a-z0-9]", "-", text.lower())[:63]
    return slug.strip("-")


@dataclass(frozen=True)
class PipelineContext:
    """Pipeline facts the server uses when it creates the jobs."""

    project: Project
    server_url: str
    pipeline_id: int
    created_at: str
    config_path: str
    protected: bool
    registry: str | None = None

    @property
    def project_url(self) -> str:
        """The project's web URL on the fake server."""
        return f"{self.server_url}/{self.project.path}"

    def repository_url(self, token: str) -> str:
        """Return the clone URL with the job token as credentials, as GitLab sends it."""
        scheme, _, rest = self.project_url.partition("://")
        return f"{scheme}://{JOB_TOKEN_USER}:{token}@{rest}.git"


def predefined_variables(context: PipelineContext) -> list[Variable]:
    """Return the pipeline-wide predefined variables GitLab puts in every job payload."""
    public = {"CI": "true", "GITLAB_CI": "true", **_server_values(context),
              **_project_values(context), **_commit_values(context)}
    if context.registry:
        public["CI_REGISTRY"] = context.registry
        public["CI_REGISTRY_IMAGE"] = f"{context.registry}/{context.project.path}".lower()
    return [Variable(key, value, public=True) for key, value in public.items()]


def _server_values(context: PipelineContext) -> dict[str, str]:
    parsed = urllib.parse.urlsplit(context.server_url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    return {
        "CI_SERVER_URL": context.server_url,
        "CI_SERVER_HOST": parsed.hostname or "",
        "CI_SERVER_PORT": str(port),
        "CI_SERVER_PROTOCOL": parsed.scheme,
        "CI_SERVER_FQDN": parsed.netloc,
        "CI_SERVER_NAME": "GitLab",
        "CI_SERVER_VERSION": SERVER_VERSION,
        "CI_SERVER_VERSION_MAJOR": SERVER_VERSION.split(".")[0],
        "CI_SERVER_VERSION_MINOR": SERVER_VERSION.split(".")[1],
        "CI_SERVER_VERSION_PATCH": SERVER_VERSION.split(".")[2],
        "CI_SERVER_REVISION": "harness",
        "CI_API_V4_URL": f"{context.server_url}/api/v4",
        "CI_API_GRAPHQL_URL": f"{context.server_url}/api/graphql",
    }


def _project_values(context: PipelineContext) -> dict[str, str]:
    project = context.project
    return {
        "CI_PROJECT_ID": str(project.id),
        "CI_PROJECT_NAME": project.name,
        "CI_PROJECT_TITLE": project.name,
        "CI_PROJECT_PATH": project.path,
        "CI_PROJECT_PATH_SLUG": slugify(project.path),
        "CI_PROJECT_NAMESPACE": project.namespace,
        "CI_PROJECT_ROOT_NAMESPACE": project.root_namespace,
        "CI_PROJECT_URL": context.project_url,
        "CI_PROJECT_VISIBILITY": "private",
        "CI_DEFAULT_BRANCH": project.default_branch,
        "CI_CONFIG_PATH": context.config_path,
        "CI_PIPELINE_ID": str(context.pipeline_id),
        "CI_PIPELINE_IID": str(context.pipeline_id),
        "CI_PIPELINE_SOURCE": "push",
        "CI_PIPELINE_URL": f"{context.project_url}/-/pipelines/{context.pipeline_id}",
        "CI_PIPELINE_CREATED_AT": context.created_at,
        "CI_NODE_TOTAL": "1",
    }


def _commit_values(context: PipelineContext) -> dict[str, str]:
    project = context.project
    return {
        "CI_COMMIT_SHA": project.sha,
        "CI_COMMIT_SHORT_SHA": project.sha[:8],
        "CI_COMMIT_BEFORE_SHA": project.before_sha,
        "CI_COMMIT_REF_NAME": project.ref,
        "CI_COMMIT_REF_SLUG": slugify(project.ref),
        "CI_COMMIT_BRANCH": project.ref,
        "CI_COMMIT_REF_PROTECTED": "true" if context.protected else "false",
        "CI_COMMIT_MESSAGE": project.commit_message,
        "CI_COMMIT_TITLE": project.commit_title,
        "CI_COMMIT_DESCRIPTION": project.commit_description,
        "CI_COMMIT_TIMESTAMP": project.commit_timestamp,
        "CI_COMMIT_AUTHOR": project.commit_author,
    }


def job_variables(context: PipelineContext, name: str, stage: str, job_id: int | None,
                  token: str | None) -> list[Variable]:
    """Return the predefined variables of one job; id and token ones only once they are known."""
    variables = [
        Variable("CI_JOB_NAME", name, public=True),
        Variable("CI_JOB_NAME_SLUG", slugify(name), public=True),
        Variable("CI_JOB_STAGE", stage, public=True),
    ]
    if job_id is not None:
        variables += [
            Variable("CI_JOB_ID", str(job_id), public=True),
            Variable("CI_JOB_URL", f"{context.project_url}/-/jobs/{job_id}", public=True),
            Variable("CI_JOB_STARTED_AT", context.created_at, public=True),
        ]
    if token is not None:
        variables += [
            Variable("CI_JOB_TOKEN", token, masked=True, public=False),
            Variable("CI_REGISTRY_USER", JOB_TOKEN_USER, public=True),
            Variable("CI_REGISTRY_PASSWORD", token, masked=True, public=False),
            Variable("CI_REPOSITORY_URL", context.repository_url(token), public=False),
        ]
    return variables


class ExpressionError(ValueError):
    """Error for a variable expression that is not valid GitLab syntax."""


_TOKEN = re.compile(
    r"""\s*(?:
        (?P<variable>\$(?:\{(?P<braced>\w+)\}|(?P<bare>\w+)))
      | "(?P<dquoted>[^"]*)"
      | '(?P<squoted>[^']*)'
      | /(?P<pattern>(?:\\.|[^/\\])+)/(?P<flags>[imsU]*)
      | (?P<null>null\b)
      | (?P<operator>==|!=|=~|!~|&&|\|\||\(|\))
    )""",
    re.VERBOSE,
)
_COMPARISONS = ("==", "!=", "=~", "!~")
_FLAGS = {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL, "U": 0}

# An evaluated operand: a variable value or literal (str), an unset variable or null (None),
# or a regex literal.
Operand = str | None | re.Pattern[str]
Node = Callable[[Mapping[str, str]], Operand | bool]


@dataclass(frozen=True)
class Expression:
    """A parsed variable expression; call :meth:`evaluate` with the job's variables."""

    text: str
    root: Node

    def evaluate(self, variables: Mapping[str, str]) -> bool:
        """Return the truth value GitLab gives the expression for these variables."""
        return _truthy(self.root(variables))


def parse_expression(text: str) -> Expression:
    """Parse a ``rules:if`` style expression.

    Raises:
        ExpressionError: the text is empty, has an unknown token or an unbalanced parenthesis.
    """
    tokens = _tokenize(text)
    if not tokens:
        raise ExpressionError("the expression is empty")

    parser = _Parser(tokens)
    root = parser.parse_or()
    if parser.position != len(tokens):
        raise ExpressionError(f"unexpected {tokens[parser.position][1]!r}")
    return Expression(text, root)


def _tokenize(text: str) -> list[tuple[str, Any]]:
    tokens: list[tuple[str, Any]] = []
    position = 0
    while text[position:].strip():
        match = _TOKEN.match(text, position)
        if not match:
            raise ExpressionError(f"cannot parse {text[position:].strip()!r}")
        tokens.append(_token_from_match(match))
        position = match.end()
    return tokens


def _token_from_match(match: re.Match[str]) -> tuple[str, Any]:
    if match["variable"]:
        return ("variable", match["braced"] or match["bare"])
    if match["dquoted"] is not None or match["squoted"] is not None:
        return ("string", match["dquoted"] if match["dquoted"] is not None else match["squoted"])
    if match["pattern"]:
        return ("regex", _compile_regex(match["pattern"], match["flags"]))
    if match["null"]:
        return ("null", None)
    return ("operator", match["operator"])


def _compile_regex(pattern: str, flags: str) -> re.Pattern[str]:
    combined = 0
    for flag in flags:
        combined |= _FLAGS[flag]
    try:
        return re.compile(pattern.replace("\\/", "/"), combined)
    except re.error as error:
        raise ExpressionError(f"invalid regular expression /{pattern}/: {error}") from error


def _regex_from_value(value: Operand) -> re.Pattern[str] | None:
    """Return the regex a variable contains in ``/.../flags`` form, as GitLab allows on ``=~``."""
    if isinstance(value, re.Pattern):
        return value
    match = re.fullmatch(r"/(.+)/([imsU]*)", value or "", re.DOTALL)
    if not match:
        return None
    try:
        return _compile_regex(match[1], match[2])
    except ExpressionError:
        return None


def _truthy(value: Operand | bool) -> bool:
    if isinstance(value, re.Pattern):
        return True
    return bool(value)


def _compare(operator: str, left: Operand, right: Operand) -> bool:
    if operator in ("==", "!="):
        equal = left == right if not isinstance(right, re.Pattern) else False
        return equal if operator == "==" else not equal

    # GitLab matches an unset variable as the empty string.
    regex = _regex_from_value(right)
    matched = bool(regex and regex.search(left if isinstance(left, str) else ""))
    return matched if operator == "=~" else not matched


class _Parser:
    """Recursive descent: ``||`` binds loosest, then ``&&``, then the comparisons."""

    def __init__(self, tokens: list[tuple[str, Any]]) -> None:
        self.tokens = tokens
        self.position = 0

    def _peek(self) -> tuple[str, Any] | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def _accept(self, operator: str) -> bool:
        if self._peek() == ("operator", operator):
            self.position += 1
            return True
        return False

    def parse_or(self) -> Node:
        node = self.parse_and()
        while self._accept("||"):
            left, right = node, self.parse_and()
            node = lambda env, a=left, b=right: _truthy(a(env)) or _truthy(b(env))  # noqa: E731
        return node

    def parse_and(self) -> Node:
        node = self.parse_comparison()
        while self._accept("&&"):
            left, right = node, self.parse_comparison()
            node = lambda env, a=left, b=right: _truthy(a(env)) and _truthy(b(env))  # noqa: E731
        return node

    def parse_comparison(self) -> Node:
        left = self.parse_operand()
        for operator in _COMPARISONS:
            if self._accept(operator):
                right = self.parse_operand()
                return lambda env, a=left, b=right, op=operator: _compare(op, a(env), b(env))
        return left

    def parse_operand(self) -> Node:
        token = self._peek()
        if token is None:
            raise ExpressionError("the expression ends where a value is expected")
        self.position += 1

        kind, value = token
        if kind == "variable":
            return lambda env, name=value: env.get(name)
        if kind in ("string", "regex", "null"):
            return lambda env, literal=value: literal
        if value == "(":
            node = self.parse_or()
            if not self._accept(")"):
                raise ExpressionError("a parenthesis is not closed")
            return node
        raise ExpressionError(f"unexpected {value!r} where a value is expected")
