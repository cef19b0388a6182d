"""``pv equations CONTRACT``: a contract's equations as text or as LaTeX for a paper or PR.

Formulas in contracts are written for people (``σ(x)_i = exp(x_i - max(x))``, ``ℝ^n``,
``logical_shape(hf) = [out, in]``); the LaTeX form maps the Unicode symbols to commands,
sets multi-letter names upright and escapes what TeX would misread (``_`` in names, ``%``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from provable.contracts.findings import printable
from provable.contracts.model import Contract

SYMBOLS = {
    "α": r"\alpha",
    "β": r"\beta",
    "γ": r"\gamma",
    "δ": r"\delta",
    "ε": r"\varepsilon",
    "θ": r"\theta",
    "λ": r"\lambda",
    "μ": r"\mu",
    "π": r"\pi",
    "σ": r"\sigma",
    "τ": r"\tau",
    "φ": r"\varphi",
    "ω": r"\omega",
    "Σ": r"\sum",
    "∑": r"\sum",
    "Π": r"\prod",
    "∏": r"\prod",
    "Δ": r"\Delta",
    "∇": r"\nabla",
    "∂": r"\partial",
    "√": r"\sqrt",
    "∞": r"\infty",
    "∈": r"\in",
    "∉": r"\notin",
    "⊂": r"\subset",
    "⊆": r"\subseteq",
    "∀": r"\forall",
    "∃": r"\exists",
    "≤": r"\leq",
    "≥": r"\geq",
    "≠": r"\neq",
    "≈": r"\approx",
    "≡": r"\equiv",
    "→": r"\to",
    "←": r"\leftarrow",
    "⟹": r"\implies",
    "⇒": r"\Rightarrow",
    "⇔": r"\iff",
    "↔": r"\leftrightarrow",
    "×": r"\times",
    "·": r"\cdot",
    "⊙": r"\odot",
    "⊗": r"\otimes",
    "∘": r"\circ",
    "±": r"\pm",
    "∧": r"\land",
    "∨": r"\lor",
    "¬": r"\neg",
    "ℝ": r"\mathbb{R}",
    "ℕ": r"\mathbb{N}",
    "ℤ": r"\mathbb{Z}",
    "ℂ": r"\mathbb{C}",
    "⌊": r"\lfloor",
    "⌋": r"\rfloor",
    "⌈": r"\lceil",
    "⌉": r"\rceil",
    "‖": r"\|",
    "…": r"\ldots",
    "²": "^{2}",
    "³": "^{3}",
}
ASCII_OPERATORS = {"<=": r"\leq", ">=": r"\geq", "!=": r"\neq", "->": r"\to", "=>": r"\Rightarrow"}
FUNCTIONS = {"exp", "log", "ln", "max", "min", "sin", "cos", "tan", "tanh", "sqrt", "arg"}
_TOKEN = re.compile(
    r"(?P<op><=|>=|!=|->|=>)"
    r"|(?P<sub>\b[A-Za-z]_(?:[A-Za-z0-9]|\{[^}]*\})(?![A-Za-z0-9_]))"
    r"|(?P<word>[A-Za-z][A-Za-z0-9_]*)"
    r"|(?P<special>[#$%&{}~\\])"
    r"|(?P<other>.)",
    re.S,
)


@dataclass
class Equation:
    name: str
    line: int
    formula: str | None = None
    domain: str | None = None
    codomain: str | None = None
    invariants: list[str] = field(default_factory=list)


def equations_of(contract: Contract) -> list[Equation]:
    raw = contract.data.get("equations")
    out: list[Equation] = []
    for name, body in (raw if isinstance(raw, dict) else {}).items():
        body = body if isinstance(body, dict) else {}

        def text(key: str, body: dict[str, Any] = body) -> str | None:
            value = body.get(key)
            return str(value) if isinstance(value, (str, int, float)) else None

        invariants = body.get("invariants")
        out.append(
            Equation(
                name=str(name),
                line=contract.line_of("equations", name),
                formula=text("formula"),
                domain=text("domain"),
                codomain=text("codomain"),
                invariants=[str(i) for i in invariants] if isinstance(invariants, list) else [],
            )
        )
    return out


def to_latex(formula: str) -> str:
    """Math-mode LaTeX for a formula written in Unicode/ASCII math."""
    out: list[str] = []
    for m in _TOKEN.finditer(formula):
        kind, tok = m.lastgroup, m.group()
        if kind == "op":
            out.append(ASCII_OPERATORS[tok] + " ")
        elif kind == "sub":
            out.append(tok)
        elif kind == "word":
            if tok in FUNCTIONS:
                out.append(r"\operatorname{sqrt}" if tok == "sqrt" else "\\" + tok + " ")
            elif len(tok) == 1:
                out.append(tok)
            else:
                out.append(r"\mathrm{" + tok.replace("_", r"\_") + "}")
        elif kind == "special":
            out.append({"\\": r"\backslash ", "~": r"\sim "}.get(tok, "\\" + tok))
        elif tok in SYMBOLS:
            command = SYMBOLS[tok]
            out.append(command + (" " if command[-1].isalpha() else ""))
        else:
            out.append(tok)
    latex = re.sub(r"\s+", " ", "".join(out)).strip()
    # math mode drops spaces: keep the ones between words of prose ("never decoded")
    return re.sub(r"(\\mathrm\{[^}]*\}) (?=\\mathrm\{)", r"\1\\ ", latex)


def _text_escape(text: str) -> str:
    return re.sub(r"([#$%&_{}])", r"\\\1", text).replace("~", r"\textasciitilde{}")


def render_text(contract: Contract, equations: list[Equation]) -> str:
    lines = [f"{contract.id} {contract.version or ''}".rstrip()]
    for eq in equations:
        lines.append("")
        lines.append(f"{eq.name}:")
        lines.append(f"  {eq.formula or '(no formula)'}")
        if eq.domain:
            lines.append(f"  domain:   {eq.domain}")
        if eq.codomain:
            lines.append(f"  codomain: {eq.codomain}")
        for inv in eq.invariants:
            lines.append(f"  invariant: {inv}")
    if not equations:
        lines.append("(no equations)")
    return printable("\n".join(lines), keep_newlines=True)


def render_latex(contract: Contract, equations: list[Equation]) -> str:
    """A fragment to ``\\input``: needs amsmath and amssymb."""
    lines = [f"% {contract.id} {contract.version or ''}: equations (pv equations --format latex)"]
    for eq in equations:
        label = re.sub(r"[^A-Za-z0-9:.-]", "-", f"eq:{contract.id}:{eq.name}")
        lines.append(f"\\paragraph{{{_text_escape(eq.name)}}}")
        lines.append("\\begin{equation}")
        lines.append(f"  {to_latex(eq.formula or '')}")
        lines.append(f"  \\label{{{label}}}")
        lines.append("\\end{equation}")
        if eq.domain:
            lines.append(f"Domain: ${to_latex(eq.domain)}$.")
        if eq.codomain:
            lines.append(f"Codomain: ${to_latex(eq.codomain)}$.")
        if eq.invariants:
            lines.append("\\begin{itemize}")
            lines.extend(f"  \\item ${to_latex(inv)}$" for inv in eq.invariants)
            lines.append("\\end{itemize}")
    return "\n".join(lines)


def render_json(contract: Contract, equations: list[Equation]) -> str:
    return json.dumps(
        {
            "contract": contract.id,
            "version": contract.version,
            "equations": [
                {
                    "name": eq.name,
                    "formula": eq.formula,
                    "domain": eq.domain,
                    "codomain": eq.codomain,
                    "invariants": eq.invariants,
                    "latex": to_latex(eq.formula or ""),
                }
                for eq in equations
            ],
        },
        indent=2,
        ensure_ascii=False,
    )
