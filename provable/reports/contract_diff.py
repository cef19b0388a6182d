"""``pv diff OLD NEW``: what changed between two versions of a contract, and the bump it needs.

The semver rule is about claims: removing or loosening a claim (a falsifier, equation,
obligation or invariant gone; a tolerance widened; a formula, domain or required host
changed) breaks whoever relied on it, so it is MAJOR; adding a claim (or tightening one,
or a status change, which the lifecycle bumps as minor) is MINOR; rewording is PATCH.
A changed formula or domain counts as major because a tool cannot tell a narrowing from
a widening of meaning.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from provable.contracts.findings import ERROR, NOTE, Finding
from provable.contracts.model import Contract

MAJOR, MINOR, PATCH, NONE = 3, 2, 1, 0
LEVEL_NAMES = {MAJOR: "major", MINOR: "minor", PATCH: "patch", NONE: "none"}
_SEMVER = re.compile(r"^(\d+)\.(\d+)\.(\d+)(?:[-+].*)?$")
FALSIFIER_WORDING = ("rule", "prediction", "test", "if_fails")
FALSIFIER_STATE = ("status", "evidence")


@dataclass(frozen=True)
class Change:
    level: int
    kind: str  # rule name of the finding: falsifier-removed, tolerance-loosened, ...
    message: str
    line: int  # in the new file (the old one for removals)
    in_old: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "level": LEVEL_NAMES[self.level],
            "kind": self.kind,
            "message": self.message,
            "line": self.line,
            "file": "old" if self.in_old else "new",
        }


@dataclass
class ContractDiff:
    old: Contract
    new: Contract
    changes: list[Change]

    @property
    def required(self) -> int:
        return max((c.level for c in self.changes), default=NONE)

    @property
    def actual(self) -> int | None:
        """The bump from the old version to the new; None when either is not semver."""
        a, b = parse_semver(self.old.version), parse_semver(self.new.version)
        if a is None or b is None:
            return None
        if b[0] > a[0]:
            return MAJOR
        if b[0] == a[0] and b[1] > a[1]:
            return MINOR
        if b[:2] == a[:2] and b[2] > a[2]:
            return PATCH
        return NONE if b == a else -1  # -1: the version went backwards

    @property
    def suggested(self) -> str | None:
        v = parse_semver(self.old.version)
        if v is None or self.required == NONE:
            return self.old.version
        if self.required == MAJOR:
            return f"{v[0] + 1}.0.0"
        if self.required == MINOR:
            return f"{v[0]}.{v[1] + 1}.0"
        return f"{v[0]}.{v[1]}.{v[2] + 1}"

    @property
    def enough(self) -> bool:
        actual = self.actual
        return actual is not None and actual >= self.required and actual >= 0

    def findings(self) -> list[Finding]:
        out = [
            Finding(
                self.old.shown_path if c.in_old else self.new.shown_path,
                c.line,
                NOTE,
                c.kind,
                f"{LEVEL_NAMES[c.level]}: {c.message}",
            )
            for c in self.changes
        ]
        if not self.enough:
            out.append(
                Finding(
                    self.new.shown_path,
                    self.new.line_of("metadata", "version"),
                    ERROR,
                    "semver-bump",
                    self._shortfall(),
                )
            )
        return out

    def _shortfall(self) -> str:
        old, new = self.old.version, self.new.version
        if self.actual is None:
            return f"version {old!r} -> {new!r} is not semver; cannot check the bump"
        if self.actual < 0:
            return f"version went backwards: {old} -> {new}"
        return (
            f"version {old} -> {new} is a {LEVEL_NAMES[self.actual]} bump, but the changes "
            f"need {LEVEL_NAMES[self.required]}: at least {self.suggested}"
        )

    def summary(self) -> str:
        counts = {n: sum(c.level == lvl for c in self.changes) for lvl, n in LEVEL_NAMES.items()}
        verdict = "enough" if self.enough else "NOT enough"
        return (
            f"{len(self.changes)} changes ({counts['major']} major, {counts['minor']} minor, "
            f"{counts['patch']} patch); needs {LEVEL_NAMES[self.required]} "
            f"(suggested {self.suggested}); version {self.old.version} -> "
            f"{self.new.version}: {verdict}"
        )

    def render_text(self) -> str:
        return "\n".join([*(f.render() for f in self.findings()), self.summary()])

    def render_json(self) -> str:
        return json.dumps(
            {
                "old": {"path": self.old.shown_path, "version": self.old.version},
                "new": {"path": self.new.shown_path, "version": self.new.version},
                "changes": [c.as_dict() for c in self.changes],
                "required": LEVEL_NAMES[self.required],
                "actual": None
                if self.actual is None
                else LEVEL_NAMES.get(self.actual, "backwards"),
                "suggested": self.suggested,
                "enough": self.enough,
                "findings": [f.as_dict() for f in self.findings()],
            },
            indent=2,
            ensure_ascii=False,
        )


def parse_semver(version: str | None) -> tuple[int, int, int] | None:
    m = _SEMVER.match(version or "")
    return (int(m[1]), int(m[2]), int(m[3])) if m else None


def diff_contracts(old: Contract, new: Contract) -> ContractDiff:
    changes: list[Change] = []
    changes += _diff_metadata(old, new)
    changes += _diff_equations(old, new)
    changes += _diff_obligations(old, new)
    changes += _diff_falsifiers(old, new)
    return ContractDiff(old, new, changes)


def _norm(text: Any) -> str:
    return " ".join(str(text).split()) if text is not None else ""


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _diff_metadata(old: Contract, new: Contract) -> list[Change]:
    out: list[Change] = []
    a, b = _dict(old.data.get("metadata")), _dict(new.data.get("metadata"))
    line = new.line_of("metadata")
    for dep in sorted(set(old.depends_on) - set(new.depends_on)):
        out.append(Change(MINOR, "dependency-removed", f"depends_on no longer names {dep}", line))
    for dep in sorted(set(new.depends_on) - set(old.depends_on)):
        out.append(Change(MINOR, "dependency-added", f"depends_on now names {dep}", line))
    for key in ("description", "references"):
        if _norm(a.get(key)) != _norm(b.get(key)):
            out.append(Change(PATCH, "metadata-reworded", f"metadata.{key} changed", line))
    return out


def _diff_equations(old: Contract, new: Contract) -> list[Change]:
    out: list[Change] = []
    a, b = _dict(old.data.get("equations")), _dict(new.data.get("equations"))
    for name in a.keys() - b.keys():
        out.append(
            Change(
                MAJOR,
                "equation-removed",
                f"equation {name} removed",
                old.line_of("equations", name),
                in_old=True,
            )
        )
    for name in b.keys() - a.keys():
        out.append(
            Change(
                MINOR, "equation-added", f"equation {name} added", new.line_of("equations", name)
            )
        )
    for name in [n for n in b if n in a]:
        ea, eb = _dict(a[name]), _dict(b[name])
        line = new.line_of("equations", name)
        out.extend(
            _fields_changed(
                "equation-changed",
                f"equation {name}",
                ea,
                eb,
                ("formula", "domain", "codomain"),
                line,
            )
        )
        ia = {_norm(i) for i in _list(ea.get("invariants"))}
        ib = {_norm(i) for i in _list(eb.get("invariants"))}
        for inv in sorted(ia - ib):
            out.append(Change(MAJOR, "invariant-removed", f"equation {name}: {inv!r}", line))
        for inv in sorted(ib - ia):
            out.append(Change(MINOR, "invariant-added", f"equation {name}: {inv!r}", line))
    return out


def _fields_changed(
    kind: str, what: str, a: dict[str, Any], b: dict[str, Any], keys: tuple[str, ...], line: int
) -> list[Change]:
    """A changed formula, domain, type... rewrites the claim itself: major."""
    return [
        Change(
            MAJOR,
            kind,
            f"{what}: {key} changed from {_norm(a.get(key))!r} to {_norm(b.get(key))!r}",
            line,
        )
        for key in keys
        if _norm(a.get(key)) != _norm(b.get(key))
    ]


def _tolerance(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(str(value))
    except ValueError:
        return None


def _match_obligations(
    a: list[dict[str, Any]], b: list[dict[str, Any]]
) -> tuple[list[tuple[int, int]], list[int], list[int]]:
    """Pairs (old index, new index) matched by id, then by property text, then by position
    among obligations of the same type (a reworded property)."""
    pairs: list[tuple[int, int]] = []
    left_a, left_b = list(range(len(a))), list(range(len(b)))

    def take(key: Any) -> None:
        for i in list(left_a):
            for j in list(left_b):
                ka, kb = key(a[i]), key(b[j])
                if ka is not None and ka == kb:
                    pairs.append((i, j))
                    left_a.remove(i)
                    left_b.remove(j)
                    break

    take(lambda o: o.get("id") if isinstance(o.get("id"), str) else None)
    take(lambda o: _norm(o.get("property")) or None)
    for i, j in list(zip(list(left_a), list(left_b), strict=False)):
        if a[i].get("type") == b[j].get("type"):
            pairs.append((i, j))
            left_a.remove(i)
            left_b.remove(j)
    return pairs, left_a, left_b


def _obligations(contract: Contract) -> tuple[list[int], list[dict[str, Any]]]:
    """The obligations that are mappings, with their positions in the file's list (for lines)."""
    listed = _list(contract.data.get("proof_obligations"))
    idx = [i for i, o in enumerate(listed) if isinstance(o, dict)]
    return idx, [listed[i] for i in idx]


def _diff_obligations(old: Contract, new: Contract) -> list[Change]:
    out: list[Change] = []
    idx_a, a = _obligations(old)
    idx_b, b = _obligations(new)
    pairs, removed, added = _match_obligations(a, b)

    def label(o: dict[str, Any]) -> str:
        return str(o.get("id") or repr(_norm(o.get("property"))))

    for i in removed:
        out.append(
            Change(
                MAJOR,
                "obligation-removed",
                f"obligation {label(a[i])} removed",
                old.line_of("proof_obligations", idx_a[i]),
                in_old=True,
            )
        )
    for j in added:
        out.append(
            Change(
                MINOR,
                "obligation-added",
                f"obligation {label(b[j])} added",
                new.line_of("proof_obligations", idx_b[j]),
            )
        )
    for i, j in pairs:
        oa, ob = a[i], b[j]
        line = new.line_of("proof_obligations", idx_b[j])
        name = label(ob)
        if _norm(oa.get("property")) != _norm(ob.get("property")):
            out.append(Change(PATCH, "obligation-reworded", f"obligation {name}: property", line))
        out.extend(
            _fields_changed(
                "obligation-changed",
                f"obligation {name}",
                oa,
                ob,
                ("type", "formal", "applies_to"),
                line,
            )
        )
        out.extend(_diff_tolerance(name, oa.get("tolerance"), ob.get("tolerance"), line))
        if _norm(oa.get("equations", oa.get("equation"))) != _norm(
            ob.get("equations", ob.get("equation"))
        ):
            out.append(
                Change(PATCH, "obligation-relinked", f"obligation {name}: equation links", line)
            )
    return out


def _diff_tolerance(name: str, ta: Any, tb: Any, line: int) -> list[Change]:
    if ta is None and tb is None:
        return []
    if ta is None:
        return [
            Change(MINOR, "tolerance-tightened", f"obligation {name}: tolerance {tb} set", line)
        ]
    if tb is None:
        return [
            Change(MAJOR, "tolerance-loosened", f"obligation {name}: tolerance {ta} removed", line)
        ]
    fa, fb = _tolerance(ta), _tolerance(tb)
    if fa is None or fb is None or math.isnan(fa) or math.isnan(fb):
        if _norm(ta) == _norm(tb):
            return []
        return [
            Change(
                MAJOR,
                "tolerance-changed",
                f"obligation {name}: tolerance {ta!r} -> {tb!r} (not comparable as numbers)",
                line,
            )
        ]
    if fb > fa:
        return [
            Change(MAJOR, "tolerance-loosened", f"obligation {name}: tolerance {ta} -> {tb}", line)
        ]
    if fb < fa:
        return [
            Change(MINOR, "tolerance-tightened", f"obligation {name}: tolerance {ta} -> {tb}", line)
        ]
    return []


def _diff_falsifiers(old: Contract, new: Contract) -> list[Change]:
    out: list[Change] = []
    a = {f.id: f for f in old.falsifiers}
    b = {f.id: f for f in new.falsifiers}
    for fid in [f for f in a if f not in b]:
        out.append(Change(MAJOR, "falsifier-removed", f"{fid} removed", a[fid].line, in_old=True))
    for fid in [f for f in b if f not in a]:
        out.append(Change(MINOR, "falsifier-added", f"{fid} added", b[fid].line))
    for fid in [f for f in b if f in a]:
        fa, fb = a[fid], b[fid]
        reworded = [k for k in FALSIFIER_WORDING if _norm(getattr(fa, k)) != _norm(getattr(fb, k))]
        if reworded:
            out.append(
                Change(PATCH, "falsifier-reworded", f"{fid}: {', '.join(reworded)}", fb.line)
            )
        lost, gained = set(fa.hosts) - set(fb.hosts), set(fb.hosts) - set(fa.hosts)
        if lost:
            out.append(
                Change(
                    MAJOR,
                    "hosts-loosened",
                    f"{fid}: no longer required on {', '.join(sorted(lost))}",
                    fb.line,
                )
            )
        if gained:
            out.append(
                Change(
                    MINOR,
                    "hosts-tightened",
                    f"{fid}: now also required on {', '.join(sorted(gained))}",
                    fb.line,
                )
            )
        if fa.status != fb.status:
            out.append(
                Change(MINOR, "status-changed", f"{fid}: {fa.status} -> {fb.status}", fb.line)
            )
        links_a = _links(old, fid)
        links_b = _links(new, fid)
        if links_a != links_b:
            out.append(
                Change(PATCH, "falsifier-relinked", f"{fid}: obligation links changed", fb.line)
            )
    return out


def _links(contract: Contract, fid: str) -> str:
    for raw in _list(contract.data.get("falsification_tests")):
        if isinstance(raw, dict) and raw.get("id") == fid:
            return _norm(raw.get("obligations", raw.get("obligation")))
    return ""
