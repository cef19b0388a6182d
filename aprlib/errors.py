"""Typed errors: each names the file, and the tensor and field where there is one."""

from __future__ import annotations

import signal as _signal
from collections.abc import Sequence
from pathlib import Path


class ModelFileError(Exception):
    """A model file that cannot be read as what it claims to be."""

    def __init__(
        self, path: Path | str, message: str, tensor: str | None = None, field: str | None = None
    ) -> None:
        self.path = Path(path)
        self.message = message
        self.tensor = tensor
        self.field = field
        super().__init__(str(self))

    def __str__(self) -> str:
        where = [str(self.path)]
        if self.tensor is not None:
            where.append(f"tensor {self.tensor!r}")
        if self.field is not None:
            where.append(f"field {self.field}")
        return f"{': '.join(where)}: {self.message}"

    def __reduce__(self) -> tuple[object, ...]:
        """Rebuilt from its fields (not its one-line text), so it survives a pickle: the
        llama.cpp child sends the ModelFileError it raised back to the parent as itself."""
        return (self.__class__, (self.path, self.message, self.tensor, self.field))


class AprFormatError(ModelFileError):
    """An APR file that is truncated, damaged, hostile or of another version."""


class SafetensorsFormatError(ModelFileError):
    """A safetensors file whose header or data does not hold together."""


class GgufFormatError(ModelFileError):
    """A GGUF file that the gguf reader rejects or that carries an unsupported tensor."""


class ConversionError(Exception):
    """A conversion that cannot be done faithfully (it leaves no output file)."""


class FileChangedError(ModelFileError):
    """A file that changed (shrank, was replaced) after it was opened and checked."""


class UnsupportedFamily(ModelFileError):
    """A well-formed config naming a family this library cannot run (``apr inspect`` still
    lists the file's tensors; every other command refuses it, naming the family)."""


class ModelMemoryError(ModelFileError):
    """A tensor or structure that does not fit in the memory this process may use."""


class ShapeMismatchError(ModelFileError):
    """Weights whose shapes disagree with the config; names every mismatched field.

    ``mismatches`` holds ``(field, config value, weights value)`` for each one, so a loader
    fails before anything is truncated or broadcast.
    """

    def __init__(self, path: Path | str, mismatches: list[tuple[str, object, object]]) -> None:
        self.mismatches = mismatches
        text = "; ".join(f"{f}: config {c}, weights {w}" for f, c, w in mismatches)
        super().__init__(path, f"weights disagree with the config: {text}", field="config")

    def __reduce__(self) -> tuple[object, ...]:
        return (self.__class__, (self.path, self.mismatches))


#: a few words for the signals a native library dies of, after the signal's name
SIGNAL_WORDS = {
    "SIGILL": "illegal instruction",
    "SIGSEGV": "segmentation fault",
    "SIGBUS": "bus error",
    "SIGABRT": "abort",
    "SIGKILL": "killed (out of memory?)",
    "SIGFPE": "floating-point exception",
}


class OracleError(Exception):
    """The oracle (llama.cpp) could not give an answer: not a verdict on the model.

    Deliberately not a ModelFileError: a native library that died or hung says nothing
    about the file, so nothing that catches a bad file (and reports a FAIL) catches this.
    ``path`` is the model file (None for the ggml library calls), ``signal`` the signal the
    child died of (None if it exited or hung), ``stderr_tail`` the child's last stderr lines
    (kept out of the one-line message), ``pid`` the child's process id.
    """

    def __init__(
        self,
        path: Path | str | None,
        message: str,
        signal: int | None = None,
        stderr_tail: Sequence[str] = (),
        pid: int | None = None,
    ) -> None:
        self.path = None if path is None else Path(path)
        self.message = message
        self.signal = None if signal is None else _as_signal(signal)
        self.stderr_tail = list(stderr_tail)
        self.pid = pid
        super().__init__(message)

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[object, ...]:
        return (
            self.__class__,
            (self.path, self.message, self.signal, self.stderr_tail, self.pid),
        )


def _as_signal(number: int) -> _signal.Signals | int:
    try:
        return _signal.Signals(number)
    except ValueError:  # a real-time signal without a name
        return number


def oracle_subject(path: Path | str | None) -> str:
    """What an oracle error names: the model file's name, or the library."""
    return "the ggml library" if path is None else Path(path).name


def signal_text(number: int) -> str:
    """``SIGILL (illegal instruction)``; a signal without words is just its name."""
    try:
        name = _signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
    words = SIGNAL_WORDS.get(name)
    return f"{name} ({words})" if words else name


class OracleCrashed(OracleError):
    """The llama.cpp child died (a signal, e.g. SIGILL from an instruction this CPU lacks)
    or exited before it answered."""

    @classmethod
    def from_returncode(
        cls,
        path: Path | str | None,
        returncode: int,
        stderr_tail: Sequence[str] = (),
        pid: int | None = None,
    ) -> OracleCrashed:
        """From a child's exit status (negative: the signal that killed it)."""
        subject = oracle_subject(path)
        if returncode < 0:
            text = f"llama.cpp died with {signal_text(-returncode)} on {subject}"
            return cls(path, text, -returncode, stderr_tail, pid)
        text = f"llama.cpp exited with status {returncode} on {subject}"
        return cls(path, text, None, stderr_tail, pid)


class OracleTimeout(OracleError):
    """The llama.cpp child gave no answer in time (it was killed)."""

    @classmethod
    def after(
        cls,
        path: Path | str | None,
        seconds: float,
        stderr_tail: Sequence[str] = (),
        pid: int | None = None,
    ) -> OracleTimeout:
        text = f"llama.cpp gave no answer within {seconds:g} s on {oracle_subject(path)}"
        return cls(path, text, None, stderr_tail, pid)
