"""Resolve every ref of a spec to a full 40-character commit SHA.

Online, named refs are looked up with ``git ls-remote`` (no clone needed) and
commits are checked in the shared mirror (fetched when missing).  With
``offline`` only the cached mirrors are read; anything missing is listed in one
:class:`~builder.errors.OfflineMissingError`.
"""

from __future__ import annotations

import difflib
import logging
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from .errors import GitError, OfflineMissingError, ResolveError
from .gitcache import NETWORK_HINT, GitCache, redact
from .spec import RepoSpec, Spec

log = logging.getLogger(__name__)
HEX_RE = re.compile(r"^[0-9a-f]{4,40}$")


@dataclass(frozen=True)
class Resolution:
    comfy: str
    nodes: dict[str, str]  # node name → sha


class _Missing(Exception):
    def __init__(self, what: str):
        self.what = what


def pick_ref(refs: dict[str, str], ref: str) -> str | None:
    """The SHA ``ref`` names: an exact refs/..., else a branch, else a tag, else HEAD."""
    if ref == "HEAD":
        return refs.get("HEAD")
    for cand in (ref, f"refs/heads/{ref}", f"refs/tags/{ref}"):
        if cand.startswith("refs/") and cand in refs:
            return refs[cand]
    return None


def _suggest(refs: dict[str, str], ref: str) -> str:
    names = sorted({r.split("/", 2)[-1] for r in refs if r.startswith(("refs/heads/", "refs/tags/"))})
    close = sorted(difflib.get_close_matches(ref, names, n=3, cutoff=0.5))
    return f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""


def resolve_repo(cache: GitCache, rs: RepoSpec, *, offline: bool, what: str) -> str:
    """One repo → SHA.  Raises ResolveError / GitError, or _Missing when offline."""
    url = rs.repo
    if rs.commit:
        return _resolve_commit(cache, url, rs.commit, offline=offline, what=what)
    ref = rs.ref or "HEAD"
    if offline:
        if not cache.has_mirror(url):
            raise _Missing(f"{what} ({redact(url)}: no cached mirror)")
        refs = cache.local_refs(url)
    else:
        refs = cache.ls_remote(url)
    sha = pick_ref(refs, ref)
    if sha:
        return sha
    if HEX_RE.match(ref):  # a commit written as ref
        return _resolve_commit(cache, url, ref, offline=offline, what=what)
    if offline:
        raise _Missing(f"{what} ({redact(url)}: ref {ref!r} not in the cached mirror)")
    raise ResolveError(f"{what}: ref {ref!r} not found in {redact(url)}{_suggest(refs, ref)} "
                       "(use an existing branch or tag, or a commit SHA in 'commit')")


def _resolve_commit(cache: GitCache, url: str, commit: str, *, offline: bool, what: str) -> str:
    if len(commit) == 40 and cache.has_commit(url, commit):
        return commit
    if offline:
        if cache.has_mirror(url):
            sha = cache.rev_parse(url, commit)
            if sha:
                return sha
        raise _Missing(f"{what} ({redact(url)}: commit {commit} not cached)")
    cache.fetch(url)
    sha = cache.rev_parse(url, commit)
    if not sha and len(commit) == 40 and cache.fetch_commit(url, commit):
        sha = commit
    if not sha:
        raise ResolveError(f"{what}: commit {commit} not found in {redact(url)} "
                           "(check the SHA, or name a branch or tag in 'ref' instead)")
    return sha


def resolve_spec(spec: Spec, cache: GitCache, *, offline: bool, jobs: int = 4) -> Resolution:
    """Resolve ComfyUI and every node; report every failure at once."""
    items: list[tuple[str, RepoSpec]] = [("comfy", spec.comfy)]
    items += [(f"custom_nodes[{i}] {n.name}", n) for i, n in enumerate(spec.custom_nodes)]

    def one(item: tuple[str, RepoSpec]) -> str | BaseException:
        what, rs = item
        try:
            return resolve_repo(cache, rs, offline=offline, what=what)
        except (_Missing, ResolveError) as exc:
            return exc
        except GitError as exc:
            return ResolveError(f"{what}: {exc}")

    with ThreadPoolExecutor(max_workers=max(1, min(jobs, len(items)))) as pool:
        results = list(pool.map(one, items))
    missing = [r.what for r in results if isinstance(r, _Missing)]
    errors = [str(r) for r in results if isinstance(r, (ResolveError, GitError))]
    if errors:  # one line: every repo's failure, the shared hint once
        hint = f" ({NETWORK_HINT})"
        shared = sum(e.endswith(hint) for e in errors) > 1
        text = "; ".join(e.removesuffix(hint) if shared else e for e in errors)
        raise ResolveError(text + (hint if shared else ""))
    if missing:
        raise OfflineMissingError(missing)
    shas = [str(r) for r in results]
    for (what, _), sha in zip(items, shas):
        log.info("resolved %s → %s", what, sha[:12])
    return Resolution(comfy=shas[0], nodes={n.name: s for n, s in zip(spec.custom_nodes, shas[1:])})
