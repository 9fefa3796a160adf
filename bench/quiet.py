"""Silence third-party notices that we cannot act on, in one place: ``bench/__init__`` imports this module, so every
``bench.*`` entry point (and anything that imports ``bench``, such as ``reports.build``) is covered.

Narrow on purpose: each filter names one library logger and one message pattern, so every other message of these
libraries, their errors included, still shows. Add a notice here only when it is harmless for this project and
nothing in our code can make it go away.
"""
from __future__ import annotations

import logging
import re

# logger name -> message pattern of a notice dropped from that logger
NOTICES: dict[str, re.Pattern[str]] = {
    # transformers >= 5 without torchvision: "`CLIPImageProcessor` requires torchvision (not installed); falling back
    # to `CLIPImageProcessorPil` ...", printed on every import of diffusers' SD3 pipeline. The PIL processors are the
    # ones transformers 4 used, and torchvision is not a dependency of this project.
    "transformers.utils.import_utils": re.compile(r"requires torchvision \(not installed\); falling back to"),
    # diffusers, on every `.to(dtype)` of a VAE whose list of modules to keep in float32 is EMPTY ("... should be kept
    # in float32: []. Casting directly with `to()` ..."): nothing is kept in float32, so nothing is lost; a non-empty
    # list still shows
    "diffusers.models.modeling_utils": re.compile(r"should be kept in float32: \[\]\."),
    # DeepSpeed (optional extra), on import on a machine without a GPU: "Setting accelerator to CPU. If you have GPU
    # or other accelerator, we were unable to detect it." -- the CPU is what a CPU run means
    "DeepSpeed": re.compile(r"^Setting accelerator to CPU\."),
}


class DropNotice(logging.Filter):
    """A logger filter that drops the records whose message matches ``pattern``."""

    def __init__(self, pattern: re.Pattern[str]) -> None:
        super().__init__()
        self.pattern = pattern

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(record.getMessage())


def silence_notices() -> None:
    """Install the :data:`NOTICES` filters (idempotent; the loggers need not exist yet)."""
    for name, pattern in NOTICES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropNotice) and f.pattern is pattern for f in logger.filters):
            logger.addFilter(DropNotice(pattern))


silence_notices()
