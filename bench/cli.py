"""Checks shared by the command-line entry points (``bench.run``, ``bench.eval``, ``bench.records``).

A user error on the command line is one ``error:`` line that names the flag or setting and the fix, with exit code
2 (argparse's convention), never a traceback. Every check here is cheap and runs before a model loads or a folder
is created. The ``argparse`` types raise :class:`argparse.ArgumentTypeError`, which argparse prints after the flag's
name; the plain checks raise ``ValueError`` for the caller to hand to ``parser.error``.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Callable

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
"""A Hugging Face hub id such as ``stabilityai/stable-diffusion-3.5-medium`` (``org/name``)."""


def below_minimum(value: float, minimum: float, meaning: str) -> str | None:
    """The complaint about ``value`` when it is below ``minimum`` ("-5 is below 0; give ..."), else None."""
    if value >= minimum:
        return None
    return f"{value:g} is below {minimum:g}; give {meaning}"


def at_least(minimum: float, meaning: str, kind: type = int) -> Callable[[str], float]:
    """An argparse ``type`` that parses ``kind`` (int or float) and refuses values below ``minimum``."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            noun = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"{text!r} is not {noun}: give {meaning}") from None
        complaint = below_minimum(value, minimum, meaning)
        if complaint:
            raise argparse.ArgumentTypeError(complaint)
        return value

    parse.__name__ = kind.__name__
    return parse


def distinct_items(text: str, example: str) -> list[str]:
    """The comma-separated items of a list flag: at least one, each once (``example`` shows a valid value)."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"the list is empty: give comma-separated values such as {example}")
    repeated = sorted({item for item in items if items.count(item) > 1})
    if repeated:
        raise argparse.ArgumentTypeError(f"{', '.join(repeated)} given twice: list each value once, e.g. {example}")
    return items


def existing_file(text: str) -> Path:
    """An argparse ``type`` for a file that must exist (a config file, say)."""
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no file {text}: give the path of an existing file")
    return path


def existing_dir(text: str) -> Path:
    """An argparse ``type`` for a folder that must exist (a results root, a run folder)."""
    path = Path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"no folder {text}: give the path of an existing folder")
    return path


def output_file(text: str) -> Path:
    """An argparse ``type`` for a file to write at the end: its folder must exist now, not after the work."""
    path = Path(text)
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"no folder {path.parent} to write {path.name} into: create it first")
    return path


def check_world(world: str) -> None:
    """Refuse a world that is neither the built-in ``shapes``, an existing folder nor a hub id, and a folder whose
    ``model_index.json`` names a pipeline of no known family."""
    if world == "shapes" or HUB_ID.match(world):
        return
    if Path(world).is_dir():
        from rollout.families import ModelLoadError, detect_family

        try:
            detect_family(world)
        except ModelLoadError as err:
            raise ValueError(str(err)) from None
        return
    raise ValueError(f"world {world!r} is not 'shapes', an existing folder of a saved pipeline (SD3, FLUX.1, FLUX.2 "
                     "klein, Qwen-Image, Z-Image) or a hub id: fix the path, or give a hub id such as "
                     "stabilityai/stable-diffusion-3.5-medium")
