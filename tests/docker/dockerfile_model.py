"""A small model of the Dockerfile (stages, flags, ENV) and of .dockerignore, for the tests."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from dockerfile_parse import DockerfileParser

REPO_ROOT = Path(__file__).resolve().parents[2]
_FLAG = re.compile(r"^--([a-z-]+)(?:=(\S+))?\s+")


@dataclass
class Instruction:
    name: str  # RUN, COPY, ENV, ...
    value: str  # the text after the instruction, flags included
    line: int  # 1-based
    flags: list[tuple[str, str]] = field(default_factory=list)  # [("mount", "type=cache,..."), ...]
    body: str = ""  # value without the leading flags

    def flag_values(self, flag: str) -> list[str]:
        return [v for k, v in self.flags if k == flag]

    def mounts(self) -> list[dict[str, str]]:
        out = []
        for spec in self.flag_values("mount"):
            out.append(dict(part.split("=", 1) if "=" in part else (part, "") for part in spec.split(",")))
        return out


@dataclass
class Stage:
    name: str
    base: str
    line: int
    instructions: list[Instruction] = field(default_factory=list)

    def of(self, name: str) -> list[Instruction]:
        return [i for i in self.instructions if i.name == name]

    def env(self) -> dict[str, str]:
        """ENV set in this stage itself (not inherited)."""
        out: dict[str, str] = {}
        for ins in self.of("ENV"):
            out.update(parse_env(ins.value))
        return out


def _split_flags(value: str) -> tuple[list[tuple[str, str]], str]:
    flags = []
    rest = value.strip()
    while True:
        m = _FLAG.match(rest)
        if not m:
            return flags, rest
        flags.append((m.group(1), m.group(2) or ""))
        rest = rest[m.end():]


def parse_env(value: str) -> dict[str, str]:
    """``ENV A=1 B="x y"`` (or the legacy ``ENV A value``) → dict."""
    tokens = shlex.split(value.replace("\\\n", " "))
    if tokens and "=" not in tokens[0]:
        return {tokens[0]: " ".join(tokens[1:])}
    return dict(tok.split("=", 1) for tok in tokens)


def load(path: Path = REPO_ROOT / "Dockerfile") -> tuple[list[Instruction], list[Stage]]:
    """Global instructions (before the first FROM) and the stages, in order."""
    parser = DockerfileParser(str(path))
    global_ins: list[Instruction] = []
    stages: list[Stage] = []
    for item in parser.structure:
        name = item["instruction"]
        if name == "COMMENT":
            continue
        flags, body = _split_flags(item["value"])
        ins = Instruction(name, item["value"], item["startline"] + 1, flags, body)
        if name == "FROM":
            words = body.split()
            alias = words[2] if len(words) >= 3 and words[1].upper() == "AS" else f"#{len(stages)}"
            stages.append(Stage(alias, words[0], ins.line))
        elif stages:
            stages[-1].instructions.append(ins)
        else:
            global_ins.append(ins)
    return global_ins, stages


def stage_map(stages: list[Stage]) -> dict[str, Stage]:
    return {s.name: s for s in stages}


def ancestry(stage: Stage, stages: list[Stage]) -> list[Stage]:
    """``stage`` and the stages it is built FROM, nearest first."""
    by_name = stage_map(stages)
    chain = [stage]
    while chain[-1].base in by_name:
        chain.append(by_name[chain[-1].base])
    return chain


def effective_env(stage: Stage, stages: list[Stage]) -> dict[str, str]:
    env: dict[str, str] = {}
    for s in reversed(ancestry(stage, stages)):
        env.update(s.env())
    return env


# --- .dockerignore ---------------------------------------------------------------------------
def _pattern_matches(pattern: str, path: str) -> bool:
    """Docker's matching: path globs per component, ``**`` any number of components; a
    pattern that matches a directory also covers everything below it."""
    pat = pattern.strip("/")
    regex = ""
    i = 0
    while i < len(pat):
        if pat.startswith("**/", i):
            regex += "(?:.*/)?"
            i += 3
        elif pat.startswith("**", i):
            regex += ".*"
            i += 2
        else:
            ch = pat[i]
            regex += "[^/]*" if ch == "*" else "[^/]" if ch == "?" else re.escape(ch)
            i += 1
    return re.fullmatch(regex + "(?:/.*)?", path) is not None


def dockerignore_rules(root: Path = REPO_ROOT) -> list[tuple[bool, str]]:
    """[(exclude?, pattern)] in file order."""
    path = root / ".dockerignore"
    rules = []
    for raw in path.read_text().splitlines() if path.exists() else []:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("!"):
            rules.append((False, line[1:].strip()))
        else:
            rules.append((True, line))
    return rules


def in_context(rel: str, rules: list[tuple[bool, str]]) -> bool:
    """Whether ``rel`` (a repo-relative path) reaches the build context; last match wins."""
    rel = rel.strip("/")
    excluded = False
    for exclude, pattern in rules:
        if _pattern_matches(pattern, rel):
            excluded = exclude
    return not excluded
