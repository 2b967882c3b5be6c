"""How a command run ends: exit codes, signals turned into a clean stop, and the failure line."""

from __future__ import annotations

import json
import logging
import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import typer

EX_SOFTWARE = 70  # sysexits.h: an internal software error
OUTPUT_KEYS = ("output", "events", "incidents", "report", "workdir")


class RunWarnings(logging.Handler):
    """The warnings of one command run, for its --json object: messages, and the input files not read."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []
        self.skipped_files: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message not in self.messages:
            self.messages.append(message)
        self.skipped_files.extend(f for f in getattr(record, "skipped_files", ()) if f not in self.skipped_files)

    def fields(self) -> dict[str, Any]:
        """JSON fields: ``warnings`` and ``skipped_files`` (each only when not empty)."""
        out: dict[str, Any] = {}
        if self.messages:
            out["warnings"] = self.messages
        if self.skipped_files:
            out["skipped_files"] = self.skipped_files
        return out


class Interrupted(BaseException):
    """SIGINT or SIGTERM, raised in the main thread so that cleanup (locks, temporary files) runs."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
        self.name = signal.Signals(signum).name


@contextmanager
def signals_raise():
    """Turn SIGINT and SIGTERM into Interrupted for the duration of a command (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise Interrupted(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def fail(run: dict[str, Any], command: str, message: str, code: int) -> None:
    """Print the error paragraph on stderr (and one JSON object on stdout with --json); exit ``code``."""
    typer.echo(f"Error: {message}", err=True)
    if run.get("as_json"):
        typer.echo(json.dumps({"error": message, "exit_code": code, "command": command}))
    raise typer.Exit(code)


def command_name(fn: Callable[..., Any]) -> str:
    """The command's name as typed (the command functions are named after their commands)."""
    return fn.__name__.replace("_", "-")


def written_state(kwargs: dict[str, Any]) -> dict[str, Any]:
    """A cheap fingerprint of what the command may write: its outputs and model directory."""
    paths = {key: kwargs[key] for key in (*OUTPUT_KEYS, "model_dir") if kwargs.get(key) is not None}
    return {key: fingerprint(Path(path)) for key, path in paths.items()}


def fingerprint(path: Path) -> Any:
    try:
        if path.is_dir():
            return sorted((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in path.iterdir())
        stat = path.stat()
        return (stat.st_ino, stat.st_mtime_ns, stat.st_size)
    except OSError:
        return None


def what_was_left(before: dict[str, Any], kwargs: dict[str, Any]) -> str:
    """One sentence: which outputs and model directory the interrupted run changed."""
    changed = [key for key, state in before.items() if fingerprint(Path(kwargs[key])) != state]
    outputs = [key for key in before if key != "model_dir"]
    parts = []
    if outputs:
        written = [str(kwargs[k]) for k in outputs if k in changed]
        parts.append(
            "written completely before the interruption: " + ", ".join(written)
            if written
            else "no output written (any previous file is unchanged)"
        )
    if "model_dir" in before:
        parts.append(
            f"the model directory {kwargs['model_dir']} was changed before the interruption: rerun the "
            "command with --overwrite to complete it"
            if "model_dir" in changed
            else "the model directory is unchanged"
        )
    return "; ".join(parts) + ". Rerunning the same command is safe." if parts else "nothing was written."
