"""Logging to a file under logs/ and to the console, the same way for every pipeline step."""

from __future__ import annotations

import logging
import sys
from pathlib import Path


def setup_logging(log_file: str | Path | None, name: str = "pipeline",
                  file_level: int = logging.INFO) -> logging.Logger:
    """INFO and above to the console; `file_level` and above to `log_file` (DEBUG keeps details, such as a whole
    list of checkpoint keys, out of the console but in the file)."""
    logger = logging.getLogger(name)
    logger.setLevel(min(logging.INFO, file_level))
    logger.handlers.clear()
    logger.propagate = False
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(fmt)
    console.setLevel(logging.INFO)
    logger.addHandler(console)
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(log_file, mode="a")
        fh.setFormatter(fmt)
        fh.setLevel(file_level)
        logger.addHandler(fh)
    return logger


def fail(log: logging.Logger, message: str) -> int:
    """A failure as one `error:` line on stderr and the same line in the log file; returns exit status 1."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, "%s", (message,), None)
    for handler in log.handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)
    print(f"error: {message}", file=sys.stderr)
    return 1
