"""Git's smart HTTP protocol for the project, through ``git http-backend`` run as a CGI program.

A runner's helper container clones ``git_info.repo_url``, which carries
``gitlab-ci-token:<job token>`` as credentials. Git sends them only after a ``401`` with a
``WWW-Authenticate`` header, so a request without valid credentials gets exactly that.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

JOB_TOKEN_USER = "gitlab-ci-token"


@dataclass(frozen=True)
class CgiResponse:
    """The status, headers and body of one ``git http-backend`` reply."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes


def git_directory(repo_dir: Path) -> Path:
    """Return the git directory of a work tree or bare repository."""
    repo_dir = Path(repo_dir)
    return repo_dir / ".git" if (repo_dir / ".git").is_dir() else repo_dir


def run_http_backend(git_dir: Path, path_info: str, method: str, query: str, content_type: str,
                     body: bytes, user: str, request_headers: dict[str, str] | None = None) -> CgiResponse:
    """Run ``git http-backend`` for one request on the repository at ``git_dir``.

    ``path_info`` is the part after ``<namespace>/<project>.git``, such as ``/info/refs``.
    ``request_headers`` carries ``Content-Encoding`` (git gzips large requests) and
    ``Git-Protocol`` (protocol version 2), which the CGI reads as ``HTTP_*`` variables.
    """
    environment = {
        "GIT_PROJECT_ROOT": str(git_dir.parent),
        "GIT_HTTP_EXPORT_ALL": "1",
        "PATH_INFO": f"/{git_dir.name}{path_info}",
        "REQUEST_METHOD": method,
        "QUERY_STRING": query,
        "CONTENT_TYPE": content_type,
        "CONTENT_LENGTH": str(len(body)),
        "REMOTE_USER": user,
        "REMOTE_ADDR": "127.0.0.1",
        "PATH": "/usr/bin:/bin",
        # The repository belongs to whoever committed it, which need not be this process's user.
        "GIT_CONFIG_COUNT": "1",
        "GIT_CONFIG_KEY_0": "safe.directory",
        "GIT_CONFIG_VALUE_0": "*",
    }
    for name, value in (request_headers or {}).items():
        environment["HTTP_" + name.upper().replace("-", "_")] = value
    completed = subprocess.run(["git", "http-backend"], input=body, env=environment,
                               capture_output=True, timeout=120, check=False)
    return _parse_cgi(completed.stdout)


def _parse_cgi(output: bytes) -> CgiResponse:
    head, separator, body = output.partition(b"\r\n\r\n")
    if not separator:
        head, _, body = output.partition(b"\n\n")
    status = 200
    headers: list[tuple[str, str]] = []
    for line in head.decode("latin-1").splitlines():
        name, _, value = line.partition(":")
        if name.lower() == "status":
            status = int(value.strip().split()[0])
        elif name:
            headers.append((name.strip(), value.strip()))
    return CgiResponse(status, headers, body)
