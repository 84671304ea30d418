"""Where Flower's and Ray's own output goes, and the third-party warnings we silence.

The terminal belongs to ``securefed run``'s progress bar and its result; everything
Flower, Ray and the app log goes to the run directory's ``flower.log``:

* under Flower's simulation engine the launcher tees the ``flwr run --stream`` output
  (the ServerApp's log, Ray's and the ClientApps' output) into ``flower.log`` and the
  SuperLink's into ``superlink.out``/``superlink.log``; :func:`route_logs` sends the
  launching process's own ``flwr`` log lines there too;
* on the in-process engine :func:`route_logs` moves the ``flwr`` logger's console
  handlers, the ``securefed``/``strategies`` loggers and Python warnings (as under
  the simulation engine, where they reach ``flower.log`` with the stream) to
  ``flower.log`` for the run.

:data:`KNOWN_WARNINGS` is the one list of third-party deprecation warnings that say
nothing about the user's run; :func:`silence_known_warnings` filters them in this
process (the CLI) and :func:`pythonwarnings` for the Flower processes it starts.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["KNOWN_WARNINGS", "KnownWarning", "pythonwarnings", "route_logs",
           "silence_known_warnings"]

#: Loggers whose records go to ``flower.log`` during an in-process run.
APP_LOGGERS = ("securefed", "strategies")


@dataclass(frozen=True)
class KnownWarning:
    """One third-party warning to ignore: its message's start, category and module.

    ``message`` is literal text the warning starts with (no ``:``, so that it also
    fits ``PYTHONWARNINGS``); ``module`` the exact module that warns.
    """

    message: str
    category: type[Warning]
    module: str


KNOWN_WARNINGS: tuple[KnownWarning, ...] = (
    # every model load with transformers 4.5x, about an internal attribute PEFT reads
    KnownWarning("`is_gradient_checkpointing` is deprecated", FutureWarning,
                 "transformers.modeling_utils"),
    # Ray's tip about accelerator environment variables with num_gpus=0
    KnownWarning("Tip", FutureWarning, "ray._private.worker"),
)


def silence_known_warnings() -> None:
    """Ignore :data:`KNOWN_WARNINGS` in this process (one filter per warning)."""
    import re

    for known in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=re.escape(known.message),
                                category=known.category, module=re.escape(known.module) + r"\Z")


def pythonwarnings(existing: str = "") -> str:
    """``PYTHONWARNINGS`` for a child process: ``existing`` plus :data:`KNOWN_WARNINGS`."""
    ours = [f"ignore:{k.message}:{k.category.__name__}:{k.module}" for k in KNOWN_WARNINGS]
    return ",".join([*([existing] if existing else []), *ours])


def _console(handler: logging.Handler) -> bool:
    return isinstance(handler, logging.StreamHandler) and not isinstance(
        handler, logging.FileHandler)


@contextlib.contextmanager
def route_logs(path: Path, *, app_loggers: bool = True) -> Iterator[None]:
    """Send the ``flwr`` logger (and with ``app_loggers`` the ``securefed`` and
    ``strategies`` loggers, from INFO, and Python warnings) to ``path`` instead of the
    console while the body runs; everything is restored afterwards."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(levelname)-8s %(asctime)s %(name)s: %(message)s"))
    flwr = logging.getLogger("flwr")
    consoles = [h for h in flwr.handlers if _console(h)]
    own = [logging.getLogger(name) for name in APP_LOGGERS] if app_loggers else []
    levels = [lg.level for lg in own]
    # warnings.showwarning -> the "py.warnings" logger (unless something already does)
    capture = app_loggers and getattr(logging, "_warnings_showwarning", None) is None
    if capture:
        logging.captureWarnings(True)
        own.append(logging.getLogger("py.warnings"))
        levels.append(own[-1].level)
    for h in consoles:
        flwr.removeHandler(h)
    flwr.addHandler(handler)
    for lg in own:
        lg.addHandler(handler)
        if lg.getEffectiveLevel() > logging.INFO:
            lg.setLevel(logging.INFO)
    try:
        yield
    finally:
        flwr.removeHandler(handler)
        for h in consoles:
            flwr.addHandler(h)
        for lg, level in zip(own, levels, strict=True):
            lg.removeHandler(handler)
            lg.setLevel(level)
        if capture:
            logging.captureWarnings(False)
        handler.close()
