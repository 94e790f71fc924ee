"""What ``python -m app`` runs: the service with uvicorn on its settings.

Every setting of :class:`app.config.Settings` is a flag (``--max-body-bytes``) and a variable
(``CONVENGINE_MAX_BODY_BYTES``); a flag wins over its variable. A value either refuses is one
line on standard error naming the flag or variable and what it accepts, and exit status 2.

Before the engine is imported it sizes the BLAS thread pools so that workers x threads fits
the CPUs this process may use (a container's CPU quota included), fixes glibc's mmap
threshold so that freed memory goes back to the system (app.limits.memory), and with several
workers points the metrics at a shared directory, removed when the service stops.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import logging.config
import os
import shutil
import sys
import tempfile
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path

import pydantic
import uvicorn
from annotated_types import Ge, Gt, Le
from pydantic.fields import FieldInfo
from pydantic_settings import SettingsError

from app.config import Settings, available_cpus, get_settings
from app.limits.memory import keep_heap_small
from app.logs import log_config
from app.server import GuardedHttpProtocol, raise_open_files_limit

__all__ = ["BadSetting", "main", "parser", "settings_from"]

PREFIX = str(Settings.model_config.get("env_prefix", ""))
_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
logger = logging.getLogger("app.cli")


class BadSetting(Exception):
    """A flag or variable whose value the settings refuse: the one line to print."""


def variable(name: str) -> str:
    return f"{PREFIX}{name.upper()}"


def flag(name: str) -> str:
    return f"--{name.replace('_', '-')}"


def accepts(field: FieldInfo) -> str:
    """What a setting accepts, in words: "an integer from 0 to 65535", "one of ..."."""
    annotation, optional = field.annotation, False
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        kinds = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation, optional = kinds[0], len(kinds) < len(typing.get_args(annotation))
    words = {int: "an integer", float: "a number", str: "text"}.get(annotation)  # type: ignore[arg-type]
    if typing.get_origin(annotation) is typing.Literal:
        words = "one of " + ", ".join(typing.get_args(annotation)) + " (any case)"
    elif typing.get_origin(annotation) is list:
        words = "a comma-separated list"
    elif words is None and typing.get_origin(annotation) is typing.Annotated:
        words = "the path of an existing file"
    low = next((m for m in field.metadata if isinstance(m, (Ge, Gt))), None)
    high = next((m.le for m in field.metadata if isinstance(m, Le)), None)
    if isinstance(low, Ge) and high is not None:
        words = f"{words} from {low.ge} to {high}"
    elif isinstance(low, Ge):
        words = f"{words} of at least {low.ge}"
    elif isinstance(low, Gt):
        words = f"{words} above {low.gt}"
    return f"{words}, or empty for none" if optional else str(words)


def parser() -> argparse.ArgumentParser:
    """The command line: one flag per setting, its help from the setting's description."""
    cli = argparse.ArgumentParser(
        prog="python -m app",
        description="Serve convengine over HTTP. Each flag overrides its CONVENGINE_* variable.",
    )
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        shown = "unset" if default in (None, "", []) else str(default)
        if field.default_factory is not None and default:
            shown = f"{shown} (on this machine)"
        cli.add_argument(
            flag(name),
            dest=name,
            metavar=name.upper(),
            default=argparse.SUPPRESS,
            help=f"{field.description}; {accepts(field)}; variable {variable(name)}, "
            f"default {shown}".replace("%", "%%"),
        )
    return cli


def settings_from(flags: Mapping[str, str]) -> Settings:
    """The settings from ``flags`` over the environment; :class:`BadSetting` for a bad value."""
    try:
        return Settings(**flags)  # type: ignore[arg-type]  # pydantic converts the text
    except pydantic.ValidationError as exc:
        error = exc.errors()[0]
        name = str(error["loc"][0]) if error["loc"] else ""
        field = Settings.model_fields.get(name)
        if field is None:
            raise BadSetting(error["msg"]) from None
        where = flag(name) if name in flags else variable(name)
        given = flags.get(name, os.environ.get(variable(name), ""))
        why = error["msg"].removeprefix("Value error, ")
        problem = f"{where}={given!r} is refused: it takes {accepts(field)} ({why})"
        raise BadSetting(problem) from None
    except SettingsError as exc:
        raise BadSetting(str(exc)) from None


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """A warning for each ``CONVENGINE_*`` variable no setting reads, naming the closest one."""
    known = [variable(name) for name in Settings.model_fields]
    warnings = []
    for key in sorted(environ):
        if key.startswith(PREFIX) and key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f": did you mean {close[0]}?" if close else f" (known: {', '.join(known)})"
            warnings.append(f"{key} is not a setting and is ignored{hint}")
    return warnings


def main(argv: Sequence[str] | None = None) -> None:
    flags = vars(parser().parse_args(argv))
    try:
        settings = settings_from(flags)
    except BadSetting as exc:
        print(f"python -m app: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    # The app (imported by uvicorn, here or in each worker) reads its settings from the
    # environment: the flags go there, over their variables.
    os.environ.update({variable(name): value for name, value in flags.items()})
    get_settings.cache_clear()
    logging.config.dictConfig(log_config(settings.log_level))
    logging.captureWarnings(True)
    for warning in unknown_variables(os.environ):
        logger.warning(warning)
    serve(settings)


def serve(settings: Settings) -> None:
    keep_heap_small()
    raise_open_files_limit()
    threads = max(1, available_cpus() // settings.workers)
    for name in _THREAD_VARIABLES:
        os.environ.setdefault(name, str(threads))
    shared: Path | None = None
    if settings.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        shared = Path(tempfile.mkdtemp(prefix="convengine-metrics-"))
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(shared)
    try:
        uvicorn.run(
            "app.main:app",
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            log_level=settings.log_level,
            log_config=log_config(settings.log_level),
            access_log=False,  # app.observe writes one JSON line per request instead
            timeout_graceful_shutdown=settings.shutdown_timeout,
            limit_concurrency=settings.max_connections,
            http=GuardedHttpProtocol,  # header and send timeouts, a bound on unfinished headers
        )
    finally:
        if shared is not None:  # the supervisor returns once its workers have stopped
            shutil.rmtree(shared, ignore_errors=True)
