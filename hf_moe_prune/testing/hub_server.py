"""A loopback Hugging Face Hub for offline tests of `push_to_hub` and `from_pretrained("user/repo")`.

Standard library only. It speaks the part of the Hub's HTTP protocol that `huggingface_hub` (2.x) uses to create repos
and branches, commit files (every file "regular", i.e. base64 inside the NDJSON commit, so no LFS or Xet), read repo
info and file trees, and download files. Repos, branches, pull requests and commits live in memory; file contents are
stored on disk by git blob id. Each commit holds the full file list, so a test can inspect any revision.

    with HubServer() as hub, hub_environment(hub):
        model.push_to_hub("tester/pruned")
        AutoModelForCausalLM.from_pretrained("tester/pruned")
"""

from __future__ import annotations

import base64
import hashlib
import json
import tempfile
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

TOKEN = "hf_loopback_test_token"
GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"


@dataclass
class Commit:
    oid: str
    parent: str | None
    summary: str
    description: str
    files: dict[str, str]  # path in repo -> blob oid (git sha1)


@dataclass
class Repo:
    repo_id: str
    private: bool
    branches: dict[str, str] = field(default_factory=dict)  # also holds "refs/pr/N" heads
    commits: dict[str, Commit] = field(default_factory=dict)
    pull_requests: list[dict] = field(default_factory=list)

    def head(self, revision: str) -> Commit | None:
        oid = self.branches.get(revision, revision)
        return self.commits.get(oid)


def git_oid(data: bytes) -> str:
    """Git blob id of `data`; `huggingface_hub` compares it with the preupload `oid` to skip unchanged files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubServer(ThreadingHTTPServer):
    """The loopback Hub; `url` is its endpoint. Set `fail_next_commit = 500` (any status) to make the next commit fail.

    Args:
        root (`str`, *optional*): Folder for file contents; a fresh temporary folder by default.
        user (`str`, *optional*, defaults to `"tester"`): The account the token belongs to.
    """

    daemon_threads = True

    def __init__(self, root: str | None = None, user: str = "tester"):
        super().__init__(("127.0.0.1", 0), _Handler)
        self._tmp = None if root else tempfile.TemporaryDirectory(prefix="hub_server_")
        self.blobs = Path(root or self._tmp.name) / "blobs"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.user, self.token = user, TOKEN
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request, for assertions
        self.fail_next_commit: int | None = None
        self.lock = threading.Lock()
        self.url = f"http://127.0.0.1:{self.server_address[1]}"

    def __enter__(self) -> HubServer:
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
        self.server_close()
        if self._tmp is not None:
            self._tmp.cleanup()

    def read(self, repo_id: str, path: str, revision: str = "main") -> bytes:
        """Content of `path` at `revision` (a test helper)."""
        return (self.blobs / self.repos[repo_id].head(revision).files[path]).read_bytes()

    def commit(self, repo: Repo, parent: str | None, branch: str, header: dict, files: dict[str, bytes | None]):
        """Record a commit on `branch` from `parent`; `files` maps paths to new content, or None to delete them."""
        tree = dict(repo.commits[parent].files) if parent else {}
        for path, data in files.items():
            if data is None:
                tree = {p: o for p, o in tree.items() if p != path and not p.startswith(path.rstrip("/") + "/")}
            else:
                tree[path] = git_oid(data)
                (self.blobs / tree[path]).write_bytes(data)
        oid = hashlib.sha1(json.dumps([parent, header, sorted(tree.items()), len(repo.commits)]).encode()).hexdigest()
        repo.commits[oid] = Commit(oid, parent, header["summary"], header.get("description", ""), tree)
        repo.branches[branch] = oid
        return repo.commits[oid]


class _Handler(BaseHTTPRequestHandler):
    server: HubServer

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def _send(self, status: int, body: object = None, headers: dict | None = None, raw: bytes | None = None):
        data = raw if raw is not None else json.dumps(body if body is not None else {}).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Content-Type", "application/octet-stream" if raw is not None else "application/json")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _error(self, status: int, message: str, code: str | None = None):
        self._send(status, {"error": message}, {"X-Error-Code": code} if code else None)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _authorized(self) -> bool:
        return self.headers.get("Authorization") == f"Bearer {self.server.token}"

    def _route(self):
        url = urlsplit(self.path)
        parts = [unquote(p) for p in url.path.strip("/").split("/")]  # split before unquoting: "refs%2Fpr%2F1"
        query = parse_qs(url.query)
        self.server.requests.append((self.command, url.path))
        with self.server.lock:
            if parts[:2] == ["api", "whoami-v2"]:
                return self._whoami()
            if parts[:2] == ["api", "validate-yaml"]:
                return self._send(200, {"errors": [], "warnings": []})
            if parts[:3] == ["api", "repos", "create"]:
                return self._create_repo(json.loads(self._body()))
            if parts[:2] == ["api", "models"] and len(parts) >= 4:
                return self._api(self._repo("/".join(parts[2:4])), parts[4:], query)
            if len(parts) >= 5 and parts[2] == "resolve":
                return self._resolve(self._repo("/".join(parts[:2])), parts[3], "/".join(parts[4:]))
            self._error(404, f"No route for {self.command} {url.path}")

    do_GET = do_HEAD = do_POST = _route

    def _repo(self, repo_id: str) -> Repo | None:
        repo = self.server.repos.get(repo_id)
        # Like the Hub, a private repo is invisible (404, not 403) without the owner's token.
        return repo if repo is not None and (not repo.private or self._authorized()) else None

    def _whoami(self):
        if not self._authorized():
            return self._error(401, "Invalid credentials in Authorization header")
        self._send(200, {"name": self.server.user, "type": "user", "orgs": [], "auth": {"type": "access_token"}})

    def _create_repo(self, payload: dict):
        if not self._authorized():
            return self._error(401, "Invalid credentials in Authorization header")
        repo_id = f"{payload.get('organization') or self.server.user}/{payload['name']}"
        url = f"{self.server.url}/{repo_id}"
        if repo_id in self.server.repos:
            return self._send(409, {"error": "You already created this model repo", "url": url})  # client reads url
        repo = self.server.repos[repo_id] = Repo(repo_id, payload.get("visibility") == "private")
        self.server.commit(repo, None, "main", {"summary": "initial commit"}, {".gitattributes": GITATTRIBUTES})
        self._send(200, {"url": url, "name": repo_id})

    def _api(self, repo: Repo | None, rest: list[str], query: dict):
        if repo is None:
            return self._error(404, "Repository not found", "RepoNotFound")
        action, revision = (rest[0] if rest else "revision"), (rest[1] if len(rest) > 1 else "main")
        if action == "branch" and self.command == "POST":
            return self._create_branch(repo, revision, json.loads(self._body() or b"{}"))
        head = repo.head(revision)
        if head is None:
            return self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        if action == "preupload":
            files = json.loads(self._body())["files"]
            return self._send(200, {"files": [self._preupload(head, f["path"]) for f in files]})
        if action == "commit":
            return self._commit(repo, revision, head, "create_pr" in query)
        if action == "tree":
            prefix = "/".join(rest[2:])
            entries = [(p, o) for p, o in sorted(head.files.items()) if p.startswith(prefix)]
            return self._send(200, [self._entry(p, o) for p, o in entries])
        if action == "revision":
            siblings = [{"rfilename": p} for p in sorted(head.files)]
            info = {"id": repo.repo_id, "modelId": repo.repo_id, "sha": head.oid, "private": repo.private}
            return self._send(200, {**info, "siblings": siblings, "tags": [], "downloads": 0, "likes": 0})
        self._error(404, f"No route for {self.command} {self.path}")

    def _entry(self, path: str, oid: str) -> dict:
        return {"type": "file", "path": path, "oid": oid, "size": (self.server.blobs / oid).stat().st_size}

    def _preupload(self, head: Commit, path: str) -> dict:
        # "regular" for every file: content travels base64-encoded inside the commit request, no LFS/Xet storage.
        return {"path": path, "uploadMode": "regular", "shouldIgnore": False, "oid": head.files.get(path)}

    def _create_branch(self, repo: Repo, branch: str, payload: dict):
        if branch in repo.branches:
            return self._error(409, f"Reference already exists: {branch}")
        start = repo.head(payload.get("startingPoint") or "main")
        if start is None:
            return self._error(404, "Invalid starting point", "RevisionNotFound")
        repo.branches[branch] = start.oid
        self._send(200, {})

    def _commit(self, repo: Repo, revision: str, head: Commit, create_pr: bool):
        if not self._authorized():
            return self._error(401, "Invalid credentials in Authorization header")
        lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
        if self.server.fail_next_commit:  # injected failure: nothing is recorded, as on the real Hub
            status, self.server.fail_next_commit = self.server.fail_next_commit, None
            return self._error(status, "Internal Error - We're working hard to fix this as soon as possible!")
        header = next(item["value"] for item in lines if item["key"] == "header")
        if header.get("parentCommit") not in (None, head.oid):
            return self._error(412, "A commit has happened since. Please refresh and try again.")
        files: dict[str, bytes | None] = {}
        for item in lines:
            value = item["value"]
            if item["key"] == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif item["key"] in ("deletedFile", "deletedFolder"):
                files[value["path"]] = None
            elif item["key"] != "header":
                return self._error(400, f"This loopback Hub does not support {item['key']!r} operations")
        branch, pr_url = revision, None
        if create_pr:
            number = len(repo.pull_requests) + 1
            branch, pr_url = f"refs/pr/{number}", f"{self.server.url}/{repo.repo_id}/discussions/{number}"
            repo.pull_requests.append({"num": number, "title": header["summary"], "target": revision})
        commit = self.server.commit(repo, head.oid, branch, header, files)
        url = f"{self.server.url}/{repo.repo_id}/commit/{commit.oid}"
        self._send(200, {"commitUrl": url, "commitOid": commit.oid, "pullRequestUrl": pr_url, "success": True})

    def _resolve(self, repo: Repo | None, revision: str, path: str):
        if repo is None:
            return self._error(404, "Repository not found", "RepoNotFound")
        head = repo.head(revision)
        if head is None:
            return self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        if path not in head.files:
            return self._error(404, "Entry not found", "EntryNotFound")
        oid = head.files[path]
        self._send(
            200, raw=(self.server.blobs / oid).read_bytes(), headers={"X-Repo-Commit": head.oid, "ETag": f'"{oid}"'}
        )
