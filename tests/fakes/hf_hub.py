"""A fake Hugging Face Hub endpoint (point ``HF_ENDPOINT`` / ``cfg.hf_endpoint`` at ``.url``).

Serves what huggingface_hub 2.4 requests for a single file:

* ``HEAD|GET /{org}/{repo}/resolve/{revision}/{path}`` — answered like the Hub:
  ``X-Repo-Commit`` always; small files ``200`` with ``ETag`` (git blob sha) and
  ``Content-Length``; LFS files ``302`` to a signed CDN URL on *another host*
  (``localhost`` instead of ``127.0.0.1``) with ``X-Linked-Etag`` (the sha256),
  ``X-Linked-Size`` and ``Location``.  Errors carry ``X-Error-Code``
  (``RepoNotFound`` 401, ``RevisionNotFound`` 404, ``EntryNotFound`` 404,
  ``GatedRepo`` 403).
* ``GET /cdn/{sha256}?X-Amz-Signature=...`` — the LFS bytes, with ranges.
* ``GET /api/models/{org}/{repo}[/revision/{revision}]`` — model info (``sha``, ``siblings``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from urllib.parse import unquote

from tests.fakes.model_server import ModelFileServer, ServedFile


@dataclass
class FakeRepo:
    files: dict[str, dict[str, bytes]]  # commit -> {path: bytes}
    refs: dict[str, str]  # branch/tag -> commit
    token: str | None = None  # private: needs this token
    gated: bool = False
    lfs_min: int = 1024
    overrides: dict = field(default_factory=dict)  # path -> {"linked_etag": ...} to lie about metadata


def _commit_id(repo_id: str, n: int) -> str:
    return hashlib.sha1(f"{repo_id}#{n}".encode()).hexdigest()


class FakeHfHub(ModelFileServer):
    def __init__(self):
        super().__init__()
        self.repos: dict[str, FakeRepo] = {}
        self.blobs: dict[str, bytes] = {}

    def add_repo(self, repo_id: str, files: dict[str, bytes], *, token: str | None = None, gated: bool = False,
                 lfs_min: int = 1024) -> str:
        """Create a repo whose ``main`` points at a first commit holding ``files``; returns that commit."""
        commit = _commit_id(repo_id, 1)
        self.repos[repo_id] = FakeRepo({commit: dict(files)}, {"main": commit}, token, gated, lfs_min)
        return commit

    def push(self, repo_id: str, files: dict[str, bytes]) -> str:
        """A new commit on ``main`` (old commits stay reachable by their sha)."""
        repo = self.repos[repo_id]
        commit = _commit_id(repo_id, len(repo.files) + 1)
        repo.files[commit] = {**repo.files[repo.refs["main"]], **files}
        repo.refs["main"] = commit
        return commit

    # --- routing ---------------------------------------------------------------------
    def route(self, h, seen, method, path):
        parts = [unquote(p) for p in path.strip("/").split("/")]
        if parts[:1] == ["cdn"] and len(parts) == 2 and parts[1] in self.blobs:
            sf = ServedFile(data=self.blobs[parts[1]], etag=f'"{parts[1]}"')
            return self.serve(h, seen, method, sf)
        if parts[:2] == ["api", "models"] and len(parts) >= 4:
            return self._api(h, seen, parts)
        if len(parts) >= 5 and parts[2] == "resolve":
            return self._resolve(h, seen, method, f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]))
        return self.reply(h, seen, 404, body=b"no route")

    def _auth(self, h, seen, repo: FakeRepo | None) -> bool:
        auth = h.headers.get("Authorization", "")
        if repo is None or (repo.token and auth != f"Bearer {repo.token}"):
            self.reply(h, seen, 401, {"X-Error-Code": "RepoNotFound",
                                      "X-Error-Message": "Repository not found"}, b"{}")
            return False
        if repo.gated and not auth:
            self.reply(h, seen, 403, {"X-Error-Code": "GatedRepo", "X-Error-Message": "gated"}, b"{}")
            return False
        return True

    def _commit(self, repo: FakeRepo, revision: str) -> str | None:
        if revision in repo.refs:
            return repo.refs[revision]
        return revision if revision in repo.files else None

    def _resolve(self, h, seen, method, repo_id, revision, filename):
        repo = self.repos.get(repo_id)
        if not self._auth(h, seen, repo):
            return
        commit = self._commit(repo, revision)
        if commit is None:
            return self.reply(h, seen, 404, {"X-Error-Code": "RevisionNotFound",
                                             "X-Error-Message": "Invalid rev id"}, b"{}")
        data = repo.files[commit].get(filename)
        if data is None:
            return self.reply(h, seen, 404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit,
                                             "X-Error-Message": "Entry not found"}, b"{}")
        git_etag = '"' + hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest() + '"'
        if len(data) < repo.lfs_min:
            sf = ServedFile(data=data, etag=git_etag)
            return self.serve(h, seen, method, sf, {"X-Repo-Commit": commit})
        sha = hashlib.sha256(data).hexdigest()
        self.blobs[sha] = data
        linked = repo.overrides.get(filename, {}).get("linked_etag", sha)
        location = f"{self.alt_url}/cdn/{sha}?X-Amz-Signature=secret-signature&X-Amz-Expires=3600"
        self.reply(h, seen, 302, {"X-Repo-Commit": commit, "ETag": git_etag, "X-Linked-Etag": f'"{linked}"',
                                  "X-Linked-Size": str(len(data)), "Location": location}, b"")

    def _api(self, h, seen, parts):
        repo_id = f"{parts[2]}/{parts[3]}"
        repo = self.repos.get(repo_id)
        if not self._auth(h, seen, repo):
            return
        revision = parts[5] if len(parts) >= 6 and parts[4] == "revision" else "main"
        commit = self._commit(repo, revision)
        if commit is None:
            return self.reply(h, seen, 404, {"X-Error-Code": "RevisionNotFound"}, b"{}")
        body = json.dumps({"id": repo_id, "modelId": repo_id, "sha": commit, "private": bool(repo.token),
                           "siblings": [{"rfilename": p} for p in sorted(repo.files[commit])]}).encode()
        self.reply(h, seen, 200, {"Content-Type": "application/json"}, body)
