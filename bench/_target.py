"""One way for every benchmark to print a figure next to its target and fail when the target is missed."""

from __future__ import annotations

import operator
from dataclasses import dataclass

_OPS = {"<=": operator.le, ">=": operator.ge, "==": operator.eq}


@dataclass(frozen=True)
class Figure:
    """A measured figure and the target it is held to."""

    name: str
    value: float
    target: float
    op: str = "<="
    fmt: str = ".3f"

    @property
    def met(self) -> bool:
        return _OPS[self.op](self.value, self.target)

    def line(self) -> str:
        verdict = "met" if self.met else "MISSED"
        return f"{self.name}: {self.value:{self.fmt}} (target {self.op} {self.target:g}: {verdict})"


def report(*figures: Figure) -> int:
    """Print each figure with its target; return the exit status: 0 when every target is met, 1 otherwise."""
    for figure in figures:
        print(figure.line(), flush=True)
    missed = [f.name for f in figures if not f.met]
    if missed:
        print(f"targets missed: {', '.join(missed)}", flush=True)
        return 1
    return 0
