"""A shared cache of bare git mirrors, and checkouts made from it.

One bare repository per repo URL lives under ``<COMFY_CACHE_ROOT>/git/<slug>-<hash>.git``
(hash of the URL).  Checkouts are ordinary clones of that mirror (objects hardlinked
on the same filesystem), so each is a normal git repository at the wanted SHA and
``git status`` shows a user's modifications.  New checkouts are built in
``<name>.<random>.incomplete`` beside the target and renamed into place.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import shutil
import subprocess
import threading
import time
from pathlib import Path
from urllib.parse import urlparse, urlunparse

from .errors import GitError
from .proc import run_logged

log = logging.getLogger(__name__)

FETCH_REFSPECS = ("+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*")
SHA_RE = re.compile(r"^[0-9a-f]{40}$")
STALE_TMP_S = 6 * 3600  # a mirror being created for longer than this is abandoned
GIT_OPTS = ("-c", "http.lowSpeedLimit=1000", "-c", "http.lowSpeedTime=60", "-c", "advice.detachedHead=false",
            "-c", "gc.auto=0", "-c", "maintenance.auto=false")


def redact(url: str) -> str:
    """Drop any user:password from a URL before it goes into a message."""
    parsed = urlparse(url)
    if parsed.password or (parsed.username and parsed.scheme in ("http", "https")):
        host = parsed.hostname or ""
        netloc = f"***@{host}" + (f":{parsed.port}" if parsed.port else "")
        return urlunparse(parsed._replace(netloc=netloc))
    return url


def is_remote(url: str) -> bool:
    return not (url.startswith(("/", "./", "../", "~", "file://")))


def git_source(url: str) -> str:
    """What to hand to git: local paths made absolute, everything else unchanged."""
    if url.startswith(("./", "../", "~")):
        return str(Path(url).expanduser().resolve())
    return url


def run_git(args: list[str], *, cwd: Path | None = None, check: bool = True,
            timeout: float | None = None, what: str = "") -> subprocess.CompletedProcess:
    """Run git with no terminal (it never prompts for a password); raise GitError on failure."""
    cmd = ["git", *GIT_OPTS, *args]
    try:
        proc = run_logged(cmd, what=f"git {args[0]} {what}".strip(), timeout=timeout or 3600, cwd=cwd,
                          start_new_session=True)
    except subprocess.TimeoutExpired:
        raise GitError(f"git {args[0]} {what} timed out after {timeout:.0f} s (check the network)") from None
    except FileNotFoundError:
        raise GitError("git is not installed (install git and retry)") from None
    if check and proc.returncode != 0:
        raise GitError(f"git {args[0]} {what} failed: {last_line(proc.stderr)}")
    return proc


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ln.startswith(("fatal:", "error:")):
            return redact_text(ln)
    return redact_text(lines[-1]) if lines else "(no output)"


def redact_text(text: str) -> str:
    return re.sub(r"(https?://)[^/@\s]+@", r"\1***@", text)


NETWORK_HINT = ("check the URL, the network and your git credentials; without the network: "
                "COMFY_OFFLINE=1 or --offline, with the repos already in the git cache")


def _network_retry(fn):
    from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential

    def say_retry(state) -> None:  # one line per retry, never the traceback
        log.warning("%s; retry %d of 2 in %.0f s", state.outcome.exception(), state.attempt_number,
                    state.next_action.sleep if state.next_action else 0)

    return retry(reraise=True, stop=stop_after_attempt(3), wait=wait_exponential(multiplier=1, max=8),
                 retry=retry_if_exception_type(_TransientGitError), before_sleep=say_retry)(fn)


class _TransientGitError(GitError):
    pass


class GitCache:
    """Bare mirrors keyed by URL, plus clone/update of working checkouts."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    def _lock(self, url: str) -> threading.Lock:
        """One in-process lock per mirror (threads of one resolve); other processes rely on atomic renames."""
        with self._locks_guard:
            return self._locks.setdefault(url.rstrip("/"), threading.Lock())

    # --- mirrors ---------------------------------------------------------------
    def mirror_path(self, url: str) -> Path:
        key = hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16]
        slug = re.sub(r"[^A-Za-z0-9._-]", "_", re.split(r"[/:]", url.rstrip("/"))[-1].removesuffix(".git"))[:40]
        return self.root / f"{slug or 'repo'}-{key}.git"

    def has_mirror(self, url: str) -> bool:
        return (self.mirror_path(url) / "HEAD").is_file()

    def ensure(self, url: str) -> Path:
        """Create the mirror (online) if missing; return its path."""
        with self._lock(url):
            return self._ensure(url)

    def _ensure(self, url: str) -> Path:
        path = self.mirror_path(url)
        if self.has_mirror(url):
            return path
        self.root.mkdir(parents=True, exist_ok=True)
        for stale in self.root.glob(f"{path.name}.*.incomplete"):  # left by a killed run long ago
            if time.time() - stale.stat().st_mtime > STALE_TMP_S:
                shutil.rmtree(stale, ignore_errors=True)
        tmp = path.with_name(f"{path.name}.{secrets.token_hex(4)}.incomplete")
        try:
            run_git(["init", "--quiet", "--bare", str(tmp)], what=str(tmp))
            run_git(["--git-dir", str(tmp), "remote", "add", "origin", git_source(url)])
            self._fetch(tmp, url)
            try:
                os.replace(tmp, path)
            except OSError:  # another process won the race: use theirs
                if not self.has_mirror(url):
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return path

    def fetch(self, url: str) -> Path:
        """Bring the mirror up to date with the remote (creates it if missing)."""
        with self._lock(url):
            path = self.mirror_path(url)
            if not self.has_mirror(url):
                return self._ensure(url)
            self._fetch(path, url)
            return path

    def _fetch(self, git_dir: Path, url: str, *extra: str) -> None:
        log.info("fetching %s", redact(url))
        refspecs = list(extra) or list(FETCH_REFSPECS)
        self._run_network(["--git-dir", str(git_dir), "fetch", "--quiet", "--prune", "--no-write-fetch-head",
                           "origin", *refspecs], url)

    def fetch_commit(self, url: str, sha: str) -> bool:
        """Fetch one commit not on any branch/tag (servers that allow it); keep it under refs/pinned."""
        path = self.ensure(url)
        try:
            with self._lock(url):
                self._run_network(["--git-dir", str(path), "fetch", "--quiet", "--no-write-fetch-head",
                                   "origin", f"+{sha}:refs/pinned/{sha}"], url)
        except GitError:
            return False
        return self.has_commit(url, sha)

    def _run_network(self, args: list[str], url: str) -> None:
        remote = is_remote(url)

        @_network_retry
        def attempt() -> None:
            proc = run_git(args, check=False, timeout=1800, what=redact(url))
            if proc.returncode != 0:
                msg = f"cannot fetch {redact(url)}: {last_line(proc.stderr)}"
                raise (_TransientGitError if remote else GitError)(msg)

        try:
            attempt()
        except _TransientGitError as exc:
            raise GitError(f"{exc} ({NETWORK_HINT})") from None

    def ls_remote(self, url: str) -> dict[str, str]:
        """Refs of the remote → SHA, annotated tags peeled to their commit."""
        proc_holder: list[subprocess.CompletedProcess] = []
        remote = is_remote(url)

        @_network_retry
        def attempt() -> None:
            proc = run_git(["ls-remote", git_source(url)], check=False, timeout=300, what=redact(url))
            if proc.returncode != 0:
                msg = f"cannot reach {redact(url)}: {last_line(proc.stderr)}"
                raise (_TransientGitError if remote else GitError)(msg)
            proc_holder.append(proc)

        try:
            attempt()
        except _TransientGitError as exc:
            raise GitError(f"{exc} ({NETWORK_HINT})") from None
        return parse_ls_remote(proc_holder[-1].stdout)

    def local_refs(self, url: str) -> dict[str, str]:
        """Refs of the cached mirror, like :meth:`ls_remote` but without network."""
        path = self.mirror_path(url)
        proc = run_git(["--git-dir", str(path), "show-ref", "--head", "--dereference"], check=False)
        refs = parse_ls_remote(proc.stdout.replace(" ", "\t"))
        head = run_git(["--git-dir", str(path), "symbolic-ref", "--quiet", "HEAD"], check=False).stdout.strip()
        if head and head in refs:
            refs["HEAD"] = refs[head]
        return refs

    def rev_parse(self, url: str, rev: str) -> str | None:
        proc = run_git(["--git-dir", str(self.mirror_path(url)), "rev-parse", "--verify", "--quiet",
                        f"{rev}^{{commit}}"], check=False)
        out = proc.stdout.strip()
        return out if proc.returncode == 0 and SHA_RE.match(out) else None

    def has_commit(self, url: str, sha: str) -> bool:
        if not self.has_mirror(url):
            return False
        return run_git(["--git-dir", str(self.mirror_path(url)), "cat-file", "-e", f"{sha}^{{commit}}"],
                       check=False).returncode == 0

    # --- checkouts -------------------------------------------------------------
    def checkout_new(self, url: str, sha: str, dest: Path, *, tmp_suffix: str = ".incomplete") -> None:
        """Clone the mirror into ``dest`` at ``sha`` via a temp dir beside it; ``dest`` must not exist."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f"{dest.name}.{secrets.token_hex(4)}{tmp_suffix}")
        try:
            run_git(["clone", "--quiet", "--no-checkout", str(self.mirror_path(url)), str(tmp)],
                    what=f"of {redact(url)}")
            run_git(["-C", str(tmp), "remote", "set-url", "origin", git_source(url)])
            run_git(["-C", str(tmp), "checkout", "--quiet", "--detach", sha], what=f"{sha[:12]} in {dest.name}")
            os.replace(tmp, dest)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        log.info("checked out %s at %s into %s", redact(url), sha[:12], dest)

    def update(self, url: str, sha: str, dest: Path, *, force: bool) -> None:
        """Move an existing checkout to ``sha``; with ``force`` stash local changes first."""
        if run_git(["-C", str(dest), "cat-file", "-e", f"{sha}^{{commit}}"], check=False).returncode != 0:
            run_git(["-C", str(dest), "fetch", "--quiet", "--no-write-fetch-head", str(self.mirror_path(url)), sha],
                    what=f"{sha[:12]} into {dest.name}")
        if force and is_dirty(dest):
            run_git(["-C", str(dest), "-c", "user.name=version.py", "-c", "user.email=version.py@localhost",
                     "stash", "push", "--quiet", "-m", "saved by version.py realize --force"],
                    what=f"(saving local changes in {dest})")
            log.warning("local changes in %s saved with `git stash` (see `git -C %s stash list`)", dest, dest)
        args = ["-C", str(dest), "checkout", "--quiet", "--detach"] + (["--force"] if force else []) + [sha]
        run_git(args, what=f"{sha[:12]} in {dest.name}")
        log.info("updated %s to %s", dest, sha[:12])


def parse_ls_remote(text: str) -> dict[str, str]:
    refs: dict[str, str] = {}
    peeled: dict[str, str] = {}
    for line in text.splitlines():
        sha, _, ref = line.strip().partition("\t")
        if not SHA_RE.match(sha) or not ref:
            continue
        if ref.endswith("^{}"):
            peeled[ref[:-3]] = sha
        else:
            refs[ref] = sha
    refs.update(peeled)
    return refs


def read_head(repo: Path) -> str | None:
    """The checked-out commit of ``repo``, read from .git/HEAD without running git."""
    git = repo / ".git"
    try:
        head = (git / "HEAD").read_text().strip()
    except OSError:
        return None
    if SHA_RE.match(head):
        return head
    if head.startswith("ref: "):
        ref = head[5:]
        try:
            value = (git / ref).read_text().strip()
            return value if SHA_RE.match(value) else None
        except OSError:
            pass
        try:
            for line in (git / "packed-refs").read_text().splitlines():
                sha, _, name = line.partition(" ")
                if name == ref and SHA_RE.match(sha):
                    return sha
        except OSError:
            return None
    return None


def is_git_checkout(path: Path) -> bool:
    return (path / ".git" / "HEAD").is_file()


def is_dirty(repo: Path) -> bool:
    """True when tracked files differ from HEAD (untracked files do not count)."""
    proc = run_git(["-C", str(repo), "status", "--porcelain", "--untracked-files=no"], check=False)
    if proc.returncode != 0:
        return True
    return bool(proc.stdout.strip())


def dirty_files(repo: Path, limit: int = 3) -> list[str]:
    proc = run_git(["-C", str(repo), "status", "--porcelain", "--untracked-files=no"], check=False)
    return [ln[3:] for ln in proc.stdout.splitlines()[:limit]]
