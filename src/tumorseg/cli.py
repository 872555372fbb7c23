"""What the package's command lines share: argparse types, and how every command ends.

Every command (the ``tumorseg-*`` console scripts, each the ``main`` of its package's ``cli``;
``train.py`` and ``predict.py``; ``python -m tumorseg.phantoms``) runs through ``run_command`` (the Hydra commands
through ``hydra_command``): its exit status is ``EXIT_OK``, ``EXIT_INCOMPLETE`` or
``EXIT_UNUSABLE``, and a user error (a bad option, a missing input, an unwritable output, a full
disk) ends as one message on stderr naming the option or file and what to do. The traceback is shown
only on request: ``--debug``, or ``HYDRA_FULL_ERROR=1`` for the Hydra scripts. The scripts in
``experiments/`` use the argparse types too.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import errno
import functools
import inspect
import os
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

EXIT_OK = 0  # everything went well
EXIT_INCOMPLETE = 1  # the command ran, but some case failed or was skipped (or training stopped early)
EXIT_UNUSABLE = 2  # nothing could start: a bad option, a missing input, an unwritable output

# what to do about an OSError, by errno
_OS_ADVICE = {
    errno.ENOSPC: "free space, or write to another disk",
    errno.EDQUOT: "free space within your quota, or write to another disk",
    errno.EROFS: "write to another disk",
    errno.EACCES: "fix its permissions, or use another path",
    errno.EPERM: "fix its permissions, or use another path",
    errno.ENOENT: "check the path",
    errno.ENOTDIR: "a part of the path is a file, not a folder: check the path",
    errno.EISDIR: "give a file, not a folder",
    errno.EEXIST: "a file of that name is in the way: move it, or use another path",
}
# errors after which no later write to the same disk can succeed
OUTPUT_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
# set by ``hydra_command`` to the user's own HYDRA_FULL_ERROR, for the processes a run starts (DDP ranks)
_USER_FULL_ERROR = "TUMORSEG_USER_HYDRA_FULL_ERROR"
# a command's own explanation of an exception, None when it has none
Describe = Callable[[Exception], "str | None"]


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer of at least 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def on_off(text: str) -> bool:
    """argparse type: ``on`` or ``off``."""
    if text not in ("on", "off"):
        raise argparse.ArgumentTypeError(f"expected on or off, got {text!r}")
    return text == "on"


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the duration of the block."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                del os.environ[name]
            else:
                os.environ[name] = value


# ------------------------------------------------------------------------------------ endings


def add_debug_option(parser: argparse.ArgumentParser) -> None:
    """``--debug``: an error ends with its traceback instead of one message."""
    parser.add_argument("--debug", action="store_true", help="on an error, show the traceback")


def describe_os_error(error: OSError) -> str:
    """``error`` as ``file: reason; what to do``; an OSError raised with a message keeps it."""
    if error.errno is None or not error.strerror:
        return str(error)
    where = f"{error.filename}: " if error.filename else ""
    advice = _OS_ADVICE.get(error.errno)
    return f"{where}{error.strerror}" + (f"; {advice}" if advice else "")


def run_command(body: Callable[[], int | None], *, debug: bool = False, describe: Describe | None = None) -> int:
    """Run a command's ``body`` and return its exit status (what it returns, 0 for None).

    A user error (``ValueError``, ``OSError``, or what ``describe`` gives a message for) prints
    ``error: <message>`` on stderr and returns ``EXIT_UNUSABLE``; with ``debug`` it propagates with
    its traceback. Other exceptions are bugs and keep their traceback.
    """
    try:
        status = body()
    except Exception as error:
        if debug or not explain(error, describe):
            raise
        return EXIT_UNUSABLE
    return EXIT_OK if status is None else int(status)


def explain(error: Exception, describe: Describe | None = None) -> bool:
    """Print ``error: <message>`` on stderr if ``error`` is a user error; whether it is one."""
    message = describe(error) if describe is not None else None
    if message is None and isinstance(error, OSError):
        message = describe_os_error(error)
    elif message is None and isinstance(error, ValueError):
        message = str(error)
    if message is not None:
        print(f"error: {message}", file=sys.stderr, flush=True)
    return message is not None


def prog_name(module: str) -> str | None:
    """The name a command's usage line shows: ``python -m <module>`` when run so, else None (argparse
    then shows the console script's name, e.g. ``tumorseg-data``)."""
    return f"python -m {module}" if Path(sys.argv[0]).name == "__main__.py" else None


def hydra_command(task: Callable[[Any], Any], config_name: str, config_path: str | None = None) -> int:
    """Run ``task`` as ``@hydra.main(config_path=..., config_name=...)`` would, with the endings of
    ``run_command``, config mistakes included. ``config_path`` is a folder (relative to the task's
    file, or absolute) or a ``pkg://`` package; it defaults to the installed configs
    (``tumorseg.launch.CONF``). ``hydra.searchpath=[file:///my/conf]`` on the command line adds a
    user's own config folder to it.

    Hydra reports the errors of composition (an unknown option, a typo'd key) and of the task with a
    traceback and exit status 1, unless ``HYDRA_FULL_ERROR=1``, when it re-raises them: that is set
    here so that they reach ``run_command``, which explains them (``describe_config_error``, with
    the options in the config folder); a ``HYDRA_FULL_ERROR=1`` of the user's keeps the tracebacks.
    A task's error is explained as it leaves the task, before Hydra adds its "Error executing job"
    line, except in a multirun, where that line names the failing job.
    """
    import hydra

    from tumorseg.launch import CONF, conf_dir

    config_path = config_path or CONF
    if config_path.startswith("pkg://"):
        folder = conf_dir()
    else:
        folder = Path(inspect.getfile(task)).resolve().parent / config_path
    user = os.environ.get(_USER_FULL_ERROR, os.environ.get("HYDRA_FULL_ERROR", ""))
    debug = user == "1"

    def describe(error: Exception) -> str | None:
        return describe_config_error(error, folder)

    @functools.wraps(task)  # Hydra unwraps it to find the task's file, its name and config folder
    def job(cfg):
        try:
            return task(cfg)
        except Exception as error:
            if debug or in_multirun() or not explain(error, describe):
                raise
            raise SystemExit(EXIT_UNUSABLE) from None

    main = hydra.main(version_base="1.3", config_path=config_path, config_name=config_name)(job)
    with environment({"HYDRA_FULL_ERROR": "1", _USER_FULL_ERROR: user}):
        return run_command(main, debug=debug, describe=describe)


def in_multirun() -> bool:
    """Whether this process runs a job of a Hydra multirun (``-m``: a sweep)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def describe_config_error(error: Exception, conf_dir: str | os.PathLike) -> str | None:
    """One or two lines for a Hydra or OmegaConf error: an unknown option of a config group (with
    the group's options in ``conf_dir``), an unknown key (with the close matches), a mandatory value
    not given (with the hint its config line carries); None for other exceptions."""
    from hydra.errors import ConfigCompositionException, HydraException, MissingConfigException
    from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

    conf_dir = Path(conf_dir)
    if isinstance(error, MissingConfigException) and error.missing_cfg_file and error.options is not None:
        group, _, name = error.missing_cfg_file.rpartition("/")
        options = sorted(error.options)
        folder = f" (conf/{group}/)" if (conf_dir / group).is_dir() else ""
        return (
            f"{group}={name}: no such option{_did_you_mean(name, options, f'{group}=')}; "
            f"{group} is one of {', '.join(options)}{folder}."
        )
    cause = error.__cause__ if isinstance(error, ConfigCompositionException) else None
    if isinstance(cause, (AttributeError, KeyError)) and isinstance(cause, OmegaConfBaseException) and cause.full_key:
        given = re.search(r"use \+([^=\s]+)=(.*)$", str(error), re.M)  # Hydra's "To append ... use +KEY=VALUE"
        return _unknown_key(cause, conf_dir, *(given.groups() if given else (str(cause.full_key), "VALUE")))
    if isinstance(error, MissingMandatoryValue) and error.full_key:
        key = error.full_key
        hint = _mandatory_hint(conf_dir, key) or f"{key}=VALUE"
        return f"Missing mandatory value {key}: give it on the command line: {hint}"
    if isinstance(error, OmegaConfBaseException):
        where = f"{error.full_key}: " if error.full_key else ""
        return where + str(error.msg or error).splitlines()[0]
    if isinstance(error, HydraException):
        text = str(error).split("\nConfig search path")[0]
        return "; ".join(line.strip() for line in text.splitlines() if line.strip())
    return None


def _unknown_key(cause, conf_dir: Path, override: str, value: str) -> str:
    """The override ``override=value`` names a key that no config holds (``cause.full_key``, maybe
    a parent of ``override``): the close matches among its neighbours (at the top, with the config
    groups), else the neighbours."""
    key, full_key = str(cause.key), str(cause.full_key)
    prefix = full_key[: -len(key)] if full_key.endswith(key) else ""
    rest = override[len(full_key) :] if override.startswith(full_key) else ""
    keys = {str(k) for k in (cause.parent_node.keys() if cause.parent_node is not None else ())}
    if not prefix:
        keys |= {p.name for p in conf_dir.iterdir() if p.is_dir() and not p.name.startswith("__")}
    keys = sorted(keys - {"hydra"})
    close = _did_you_mean(key, keys, prefix, f"{rest}={value}")
    if close and prefix:
        listing = ""
    elif prefix:
        listing = f"{prefix[:-1]} has {', '.join(keys)}; "
    else:
        listing = f"config groups and keys: {', '.join(keys)}; "
    return f"{full_key}: no such key{close}\n  {listing}+{override}={value} adds a new key instead."


def _did_you_mean(word: str, choices: list[str], prefix: str = "", suffix: str = "") -> str:
    close = difflib.get_close_matches(word, choices, n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(prefix + c + suffix for c in close)}?)" if close else ""


def _mandatory_hint(conf_dir: Path, full_key: str) -> str | None:
    """The comment on the config line that marks ``full_key`` mandatory (``root: ???  # data.root=/path``)."""
    pattern = re.compile(rf"^\s*{re.escape(full_key.rpartition('.')[2])}:\s*\?\?\?\s*#\s*(\S.*?)\s*$", re.M)
    hints = {m.group(1) for path in sorted(conf_dir.rglob("*.yaml")) for m in pattern.finditer(path.read_text())}
    return hints.pop() if len(hints) == 1 else None
