"""A job's own cluster options (Galaxy's and TPV's `native_specification`), read as the
batch scheduler would and checked against the options its destination allows.

A site's router (TPV, a Galaxy environment) picks a partition, an account or a constraint
per tool and user; the destination's admin decides which of them a job may set
(`allow_native`). Only whole options are taken, each one argument on the scheduler's command
line (never text for a shell), and a value may hold no quote, newline or shell character.
"""
from __future__ import annotations

import re
import shlex
from typing import Iterable, Literal

#: how a scheduler's options are spelled: Slurm's sbatch (`--name=value`, `-p value`) or
#: Grid Engine's qsub (`-name value...`)
Style = Literal["slurm", "gridengine"]
STYLES: tuple[Style, ...] = ("slurm", "gridengine")
MAX_NATIVE = 1024
_VALUE = re.compile(r"^[A-Za-z0-9_.,:+=@/%*\[\]-]{1,255}\Z")
NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}\Z")
#: sbatch's short options, by their long names (a job writes either)
SLURM_SHORT = {"A": "account", "C": "constraint", "G": "gpus", "L": "licenses", "N": "nodes", "p": "partition",
               "q": "qos", "t": "time", "w": "nodelist", "x": "exclude", "c": "cpus-per-task", "n": "ntasks",
               "d": "dependency", "J": "job-name", "D": "chdir", "o": "output", "e": "error", "a": "array"}

Option = tuple[str, tuple[str, ...]]


class NativeError(ValueError):
    """A native specification that cannot be read or is not allowed; the message names the option."""


def options(text: str, style: Style) -> list[Option]:
    """Each option of `text` by its name (without dashes; sbatch's short ones by their long
    names) with its values."""
    if len(text) > MAX_NATIVE:
        raise NativeError(f"is longer than {MAX_NATIVE} characters")
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise NativeError(f"cannot be read as options: {exc}") from None
    found: list[tuple[str, list[str]]] = []
    for word in words:
        if word.startswith("-") and len(word) > 1 and not word[1:2].isdigit():
            found.append(_option(word, style))
        elif found and (style == "gridengine" or not found[-1][1]):
            found[-1][1].append(_value(word, found[-1][0], style))
        else:
            raise NativeError(f"{word!r} is not an option (options start with '-')")
    return [(name, tuple(values)) for name, values in found]


def arguments(text: str, style: Style) -> list[str]:
    """The options of `text` as command-line arguments, one option's name and value per
    argument for sbatch (`--partition=x`), as written for qsub (`-l`, `h_vmem=4G`)."""
    if style == "slurm":
        return [f"--{name}={values[0]}" if values else f"--{name}" for name, values in options(text, style)]
    return [part for name, values in options(text, style) for part in (f"-{name}", *values)]


def refusal(text: str, style: Style | None, allowed: Iterable[str], destination: str) -> str | None:
    """Why a job's native specification may not go to `destination`, or None."""
    allow = sorted(set(allowed))
    if style is None:
        return f"destination {destination!r} takes no native options (its runner has none)"
    try:
        found = options(text, style)
    except NativeError as exc:
        return str(exc)
    for name, _ in found:
        if name not in allow:
            dash = "--" if style == "slurm" else "-"
            return (f"option {dash}{name} is not allowed on destination {destination!r} (allow_native: "
                    f"{', '.join(allow) or 'none'}); cores, memory, walltime and GPUs are the job's own cores, "
                    "memory_mb, walltime_s and gpus")
    return None


def _option(word: str, style: Style) -> tuple[str, list[str]]:
    if style == "gridengine":
        return _name(word[1:], word), []
    if word.startswith("--"):
        name, equals, value = word[2:].partition("=")
        return _name(name, word), [_value(value, name, style)] if equals else []
    short, rest = word[1], word[2:]
    if short not in SLURM_SHORT:
        raise NativeError(f"unknown short option -{short}: write it by its long name (--name=value)")
    long = SLURM_SHORT[short]
    return long, [_value(rest, long, style)] if rest else []


def _name(name: str, word: str) -> str:
    if not NAME.match(name):
        raise NativeError(f"{word!r} is not an option name")
    return name


def _value(value: str, name: str, style: Style) -> str:
    if not _VALUE.match(value):
        dash = "--" if style == "slurm" else "-"
        raise NativeError(f"option {dash}{name} has value {value!r}: a value is 1-255 letters, digits or "
                          "_.,:+=@/%*[]-")
    return value
