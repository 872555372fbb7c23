"""Every command in the ```bash blocks of the README, the user guide (``docs/**/*.md``) and the
studies (``experiments/**/README.md``) still works, so that the guides cannot rot.

Each command is extracted (backslash continuations joined, comments dropped, ``srun``/``torchrun``
and their options stripped), classified and checked without training or predicting anything:

* ``train.py``: Hydra's own command-line and override parsers; each sweep combination (up to a
  cap) composed, the ``model``/``data``/``trainer``/``callbacks``/``logger`` nodes resolved, the
  datamodule and the model built as ``tumorseg.training.train.train`` builds them, the sizes checked as it
  checks them, the trainer, callback and logger arguments bound to their targets' signatures, and
  an Optuna search space composed at its bounds;
* ``predict.py`` and ``python -m tumorseg.export``: ``conf/predict.yaml`` (``conf/export.yaml``)
  composed with the overrides and resolved;
* the console scripts (``tumorseg-train``, ``tumorseg-predict``, ...) as the commands they equal
  (``python train.py``, ``python predict.py``, ``python -m tumorseg.<package>``);
* ``python -m tumorseg.<module>`` and ``python experiments/<script>.py``: the arguments parsed by the
  module's own parser (its ``main(argv)`` stopped right after parsing); the quick ones
  (``tumorseg.phantoms`` at a tiny size, ``tumorseg.data check``, ``tumorseg.models.summary``
  without ``--write``) also run for real on tiny inputs in a temporary folder;
* ``bash experiments/<script>.sh ARGS``: ``bash -n``, then every ``python`` and ``bash`` command
  the script runs with ARGS (positional parameters, ``${VAR:-default}`` settings and ``"$@"``
  substituted) checked as above.

A command of a kind this file does not know fails, asking for this file to be taught about it,
unless it is in the small ``ALLOWLIST`` of commands that cannot be checked here.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import importlib
import importlib.util
import inspect
import io
import itertools
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra._internal.utils import get_args_parser  # the parser @hydra.main uses for the command line
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import IntervalSweep, Override
from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf

from tumorseg.launch import register_resolvers
from tumorseg.training.train import build, resolve_precision

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = None

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# the user guide and the studies, checked the same way
GUIDES = (
    README,
    *sorted((ROOT / "docs").rglob("*.md")),
    *sorted((ROOT / "experiments").rglob("README.md")),
)
CONF = ROOT / "conf"

register_resolvers()  # ${run_id:}, ${optuna_direction:...} in the configs

# Substituted for the README's placeholders (`<run>`, `<sha256 hex>`, `$HEAD`, `data.root=...`):
# nothing is read from these paths, the configs only have to compose and resolve.
PLACEHOLDER = "PLACEHOLDER"
# Sweeps: every value combination while there are at most this many, else enough combinations
# that every value of every swept key is composed at least once (also capped at this many).
MAX_COMBINATIONS = 8
# Size of the phantoms generated when a command runs for real (the generator's minimum is 16).
TINY_SHAPE = ("32", "32", "24")

# Commands the guide shows that cannot be checked here, each with why. Keep this short: every
# other command must be checked, and a new kind of command fails until this file learns it.
# Entries are argv prefixes, one fnmatch pattern per word.
ALLOWLIST: dict[tuple[str, ...], str] = {
    # installs packages from an index (network); the extras and files it names are checked below
    ("pip",): "installs packages",
    # creates an environment with conda (network, and conda itself); the file it names is checked
    ("conda",): "creates a conda environment",
    # uploads an offline run to the W&B server: needs an account and the network
    ("wandb", "sync"): "uploads to W&B",
    # GPU checks: need a CUDA device; the script's existence is checked
    ("bash", "experiments/gpu_*.sh"): "needs a CUDA GPU",
    # submits a job: needs a SLURM cluster (#SBATCH lines are comments and never reach here)
    ("sbatch",): "needs a SLURM cluster",
    # this very suite: running it from inside itself would recurse; tests/test_readme.py ties it to CI
    ("python", "-m", "pytest"): "the test suite itself",
    # the linter: a development tool, not part of the package; CI and developers run it
    ("ruff",): "the linter",
    # a user's own config folder, which the docs name but do not ship: tests/test_install.py composes
    # and trains with one on the search path
    ("python", "train.py", "hydra.searchpath=*"): "a user's config folder (tests/test_install.py)",
}

# Hydra plugins the README may select that need not be installed here: (group, option) -> the
# module that provides them. An override selecting one that is not importable is skipped, with the
# overrides of that plugin's own settings (`hydra.launcher.*`); everything else is still composed.
HYDRA_PLUGINS = {
    ("hydra/launcher", "submitit_slurm"): "hydra_plugins.hydra_submitit_launcher",  # pip install -e ".[slurm]"
    ("hydra/launcher", "submitit_local"): "hydra_plugins.hydra_submitit_launcher",
    ("hydra/launcher", "joblib"): "hydra_plugins.hydra_joblib_launcher",
    ("hydra/launcher", "ray"): "hydra_plugins.hydra_ray_launcher",
    ("hydra/launcher", "rq"): "hydra_plugins.hydra_rq_launcher",
    ("hydra/sweeper", "optuna"): "hydra_plugins.hydra_optuna_sweeper",  # a dependency: installed
    ("hydra/sweeper", "ax"): "hydra_plugins.hydra_ax_sweeper",
    ("hydra/sweeper", "nevergrad"): "hydra_plugins.hydra_nevergrad_sweeper",
}

# Hydra applications: script or `python -m` module -> (the file that composes, the config it composes)
HYDRA_APPS = {
    "train.py": ("src/tumorseg/training/cli.py", "train"),
    "predict.py": ("src/tumorseg/predict/cli.py", "predict"),
}
HYDRA_MODULES = {
    "tumorseg.export": ("src/tumorseg/export/cli.py", "export"),
    "tumorseg.training": HYDRA_APPS["train.py"],
    "tumorseg.predict": HYDRA_APPS["predict.py"],
}
# the console scripts the package installs (pyproject.toml), as the commands they equal
CONSOLE_SCRIPTS = {
    "tumorseg-train": ("python", "train.py"),
    "tumorseg-predict": ("python", "predict.py"),
    "tumorseg-export": ("python", "-m", "tumorseg.export"),
    "tumorseg-evaluate": ("python", "-m", "tumorseg.evaluate"),
    "tumorseg-data": ("python", "-m", "tumorseg.data"),
}

TEACH = "teach tests/test_readme_commands.py about it (or add it to its ALLOWLIST, saying why it cannot be checked)"


# ------------------------------------------------------------------------------ extraction


@dataclass(frozen=True)
class Command:
    line: int  # README line where the command starts
    words: tuple[str, ...]  # shell words, placeholders substituted
    argv: tuple[str, ...]  # the same, srun/torchrun and their options stripped
    guide: str = "README.md"  # the file, relative to the repository root

    @property
    def id(self) -> str:
        text = " ".join(self.words)
        where = "" if self.guide == "README.md" else f"{self.guide}:"
        return f"{where}L{self.line}: {text if len(text) <= 72 else text[:69] + '...'}"


def bash_blocks(text: str) -> Iterator[tuple[int, str]]:
    """(first line number, body) of every ```bash block."""
    for match in re.finditer(r"^```bash[^\n]*\n(.*?)^```", text, re.M | re.S):
        yield text.count("\n", 0, match.start(1)) + 1, match.group(1)


def logical_lines(first: int, body: str) -> Iterator[tuple[int, str]]:
    """Lines with backslash continuations joined, comment-only lines dropped."""
    start, parts = None, []
    for number, raw in enumerate(body.splitlines(), first):
        line = raw.strip()
        if not parts and (not line or line.startswith("#")):  # comments, #!/bin/bash, #SBATCH
            continue
        start = number if not parts else start
        if line.endswith("\\"):
            parts.append(line[:-1].strip())
            continue
        parts.append(line)
        yield start, " ".join(p for p in parts if p)
        parts = []
    if parts:
        yield start, " ".join(p for p in parts if p)


def substitute_placeholders(text: str) -> str:
    text = re.sub(r"<[^<>\s][^<>]*>", PLACEHOLDER, text)  # <run>, <sha256 hex>
    text = re.sub(r"\$\{?[A-Z_][A-Z0-9_]*\}?", PLACEHOLDER, text)  # $HEAD, $RUN
    # `[--labels auto]`: an optional argument shown in brackets is checked as if given
    return re.sub(r"(?<=\s)\[(-[^\[\]]*)\](?=\s|$)", r"\1", text)


def split_commands(text: str) -> list[list[str]]:
    """Shell words of each command of a line (`a && b`, `a; b`, `a | b`), comments and redirections dropped."""
    lexer = shlex.shlex(substitute_placeholders(text), posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    commands: list[list[str]] = [[]]
    words = iter(lexer)
    for word in words:
        if word in ("&&", "||", ";", "|", "&"):
            commands.append([])
        elif set(word) <= set("<>&"):
            next(words, None)  # a redirection and its target
        else:
            commands[-1].append(PLACEHOLDER if word == "..." else re.sub(r"=\.\.\.$", f"={PLACEHOLDER}", word))
    return [c for c in commands if c]


def strip_launcher(argv: list[str]) -> list[str]:
    """`VAR=x python ...`, `srun [options] python ...`, `torchrun [options] script.py ...` -> `python ...`."""
    while argv and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", argv[0]):
        argv = argv[1:]
    if argv and argv[0] == "srun":
        rest = list(itertools.dropwhile(lambda w: w not in ("python", "python3"), argv[1:]))
        argv = rest or argv  # srun running something else stays unrecognised
    elif argv and argv[0] == "torchrun":
        rest = list(itertools.dropwhile(lambda w: not w.endswith(".py"), argv[1:]))
        argv = ["python", *rest] if rest else argv  # torchrun runs the script with python
    if argv and argv[0] == "python3":
        argv = ["python", *argv[1:]]
    if argv and argv[0] in CONSOLE_SCRIPTS:
        argv = [*CONSOLE_SCRIPTS[argv[0]], *argv[1:]]
    return argv


def readme_commands() -> list[Command]:
    commands = []
    for guide in GUIDES:
        name = str(guide.relative_to(ROOT))
        for first, body in bash_blocks(guide.read_text()):
            for line, text in logical_lines(first, body):
                for words in split_commands(text):
                    commands.append(Command(line, tuple(words), tuple(strip_launcher(words)), name))
    return commands


COMMANDS = readme_commands()


# ------------------------------------------------------------------------------ argparse commands


class Parsed(Exception):
    """Raised instead of returning from the outermost parse, so that main() stops there."""

    def __init__(self, namespace: argparse.Namespace):
        super().__init__("parsed")
        self.namespace = namespace


@contextlib.contextmanager
def stop_after_parsing(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """``ArgumentParser.parse_args``/``parse_known_args`` parse for real (errors exit as usual), then
    raise ``Parsed`` from the outermost call; nested calls (subcommands) are left alone."""
    real_parse_args = argparse.ArgumentParser.parse_args
    real_parse_known_args = argparse.ArgumentParser.parse_known_args
    depth = 0

    def parse_args(self, args=None, namespace=None):
        nonlocal depth
        depth += 1
        try:
            result = real_parse_args(self, args, namespace)
        finally:
            depth -= 1
        if depth == 0:
            raise Parsed(result)
        return result

    def parse_known_args(self, args=None, namespace=None):
        nonlocal depth
        depth += 1
        try:
            result = real_parse_known_args(self, args, namespace)
        finally:
            depth -= 1
        if depth == 0:
            raise Parsed(result[0])
        return result

    with monkeypatch.context() as patch:
        patch.setattr(argparse.ArgumentParser, "parse_args", parse_args)
        patch.setattr(argparse.ArgumentParser, "parse_known_args", parse_known_args)
        yield


def parse_with_main(main: Callable, args: list[str], monkeypatch: pytest.MonkeyPatch, what: str) -> argparse.Namespace:
    """The namespace ``main(args)`` parses, without running the command; a parse error fails."""
    stderr = io.StringIO()
    with stop_after_parsing(monkeypatch), contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            main(args)
        except Parsed as parsed:
            return parsed.namespace
        except SystemExit as exit_:
            if exit_.code in (0, None):  # --help
                return argparse.Namespace()
            pytest.fail(f"{what}: its own parser rejects the arguments {args}:\n{stderr.getvalue()}")
    pytest.fail(f"{what}: main() returned without parsing its arguments; {TEACH}")


def load_main(argv: tuple[str, ...]) -> tuple[str, Callable, list[str]]:
    """(module name, its main, the arguments) of `python -m tumorseg.X ...` or `python experiments/X.py ...`."""
    if argv[1] == "-m":
        name, args = argv[2], list(argv[3:])
        module = importlib.import_module(name)
        if hasattr(module, "__path__"):  # a package: python -m runs its __main__
            module = importlib.import_module(f"{name}.__main__")
    else:
        path, args = ROOT / argv[1], list(argv[2:])
        assert path.is_file(), f"{argv[1]}: no such script in the repository"
        name = argv[1]
        module = load_script(path)
    main = getattr(module, "main", None)
    if main is None or "argv" not in inspect.signature(main).parameters:
        pytest.fail(f"{name} has no main(argv) to parse its arguments with; {TEACH}")
    return name, main, args


_scripts: dict[Path, ModuleType] = {}


def load_script(path: Path) -> ModuleType:
    if path not in _scripts:
        spec = importlib.util.spec_from_file_location(f"readme_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses and pickling look the module up
        spec.loader.exec_module(module)
        _scripts[path] = module
    return _scripts[path]


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory) -> Path:
    """Two phantoms written by `python -m tumorseg.phantoms` (its main), for the commands that read data."""
    from tumorseg.phantoms.dataset import main

    out = tmp_path_factory.mktemp("readme") / "synthetic"
    assert main([str(out), "--cases", "2", "--shape", *TINY_SHAPE]) == 0
    assert len([p for p in out.iterdir() if p.is_dir()]) == 2
    return out


def run_quick(name: str, main: Callable, args: list[str], ns: argparse.Namespace, request, tmp_path: Path) -> None:
    """Run for real the commands that take seconds on tiny inputs; the others were only parsed."""
    if name == "tumorseg.phantoms":
        # the README's size and count would take minutes: 2 tiny cases, its other options kept
        out = tmp_path / "synthetic"
        tiny = [str(out), "--cases", "2", "--shape", *TINY_SHAPE, "--seed", str(ns.seed)]
        assert main(tiny + (["--preview"] if ns.preview else [])) == 0
        assert len([p for p in out.iterdir() if p.is_dir() and p.name != "previews"]) == 2
    elif name == "tumorseg.data" and ns.command == "check" and ns.layout is None and ns.convention is None:
        # the phantoms are the BraTS 2020 layout: a command that names another is only parsed
        dataset = request.getfixturevalue("tiny_dataset")
        args = [str(dataset) if a == str(ns.root) else a for a in args]  # the tiny dataset for the README's root
        assert main(args) == 0, f"python -m tumorseg.data {' '.join(args)} found problems in a generated dataset"
    elif name == "tumorseg.models.summary" and ns.write is None and ns.check is None:
        assert main(args) == 0  # prints the table; --write would rewrite the file


def check_module_command(command: Command, monkeypatch, request, tmp_path: Path) -> None:
    name, main, args = load_main(command.argv)
    ns = parse_with_main(main, args, monkeypatch, f"python {' '.join(command.argv[1:3])}")
    if vars(ns):
        run_quick(name, main, args, ns, request, tmp_path)


# ------------------------------------------------------------------------------ Hydra commands


def plugin_missing(override: Override) -> bool:
    module = HYDRA_PLUGINS.get((override.key_or_group, str(override.value())))
    if module is None:
        return False
    try:
        return importlib.util.find_spec(module) is None
    except ModuleNotFoundError:
        return True


def sweep_values(override: Override) -> list[str]:
    value = override.value()
    if isinstance(value, IntervalSweep):  # only a sweeper can sample it: its bounds
        return [str(value.start), str(value.end)]
    return list(override.sweep_string_iterator())


def combinations(sweeps: list[Override]) -> list[list[str]]:
    """Override strings for the sweep: all combinations up to the cap, else every value at least once."""
    keys = [o.get_key_element() for o in sweeps]
    values = [sweep_values(o) for o in sweeps]
    total = 1
    for v in values:
        total *= len(v)
    if total <= MAX_COMBINATIONS:
        combos = list(itertools.product(*values))
    else:
        width = min(max(len(v) for v in values), MAX_COMBINATIONS)
        combos = [tuple(v[i % len(v)] for v in values) for i in range(width)]
    return [[f"{k}={v}" for k, v in zip(keys, combo)] for combo in combos]


def compose_app(config: str, overrides: list[str], tmp_path: Path) -> DictConfig:
    defaults = []
    if not any(o.lstrip("+~").startswith("paths.root_dir=") for o in overrides):
        defaults.append(f"paths.root_dir={tmp_path}")  # ${hydra:runtime.cwd} resolves only in a run
    if not any(o.lstrip("+~").startswith("paths.output_dir=") for o in overrides):
        defaults.append(f"paths.output_dir={tmp_path / 'run'}")  # ${hydra:runtime.output_dir}, likewise
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose(config, overrides=[*overrides, *defaults], return_hydra_config=True)


def resolved(cfg: DictConfig, key: str):
    """A node or value of ``cfg`` with its interpolations resolved; a missing mandatory value (???) raises."""
    value = cfg[key]  # a scalar is resolved (or raises) here
    return OmegaConf.to_container(value, resolve=True, throw_on_missing=True) if OmegaConf.is_config(value) else value


def bind_target(node: dict, where: str) -> None:
    """The arguments of a `_target_` node fit its target's signature (without creating it)."""
    target = get_object(node["_target_"])
    kwargs = {k: v for k, v in node.items() if not (k.startswith("_") and k.endswith("_"))}
    try:
        inspect.signature(target).bind(*node.get("_args_", []), **kwargs)
    except TypeError as err:
        raise AssertionError(f"{where} ({node['_target_']}): {err}") from err


def check_train_cfg(cfg: DictConfig) -> None:
    """What tumorseg.training.train.train does before fitting: resolve, build the data and the model, check the sizes.
    The model is built on the meta device: its arguments, shapes and sizes are checked without
    initialising weights (seconds for the paper widths)."""
    nodes = {key: resolved(cfg, key) for key in ("model", "data", "trainer", "callbacks", "logger")}
    with torch.device("meta"):
        datamodule, model = build(cfg)
    # the optimizer and the learning-rate schedule, as Lightning builds them when fitting starts
    epochs = max(int(cfg.trainer.get("max_epochs") or 1), 1)  # build() resolved `auto`
    model.trainer = SimpleNamespace(estimated_stepping_batches=10 * epochs, max_epochs=epochs)
    try:
        model.configure_optimizers()
    finally:
        model.trainer = None
    trainer = {**nodes["trainer"], "precision": resolve_precision(cfg.trainer)}
    bind_target(trainer, "trainer")
    for group in ("callbacks", "logger"):
        for name, node in (nodes[group] or {}).items():
            if isinstance(node, dict) and "_target_" in node:
                bind_target(node, f"{group}.{name}")


def check_predict_cfg(cfg: DictConfig) -> None:
    for key in cfg:
        if key != "hydra":
            resolved(cfg, key)


APP_CHECKS = {"train": check_train_cfg, "predict": check_predict_cfg, "export": check_predict_cfg}


def check_hydra_command(command: Command, config: str, tmp_path: Path) -> None:
    if command.argv[1] == "-m":  # python -m tumorseg.X: the file of its command, then the overrides
        script, given = ROOT / HYDRA_MODULES[command.argv[2]][0], list(command.argv[3:])
    else:
        script, given = ROOT / HYDRA_APPS[command.argv[1]][0], list(command.argv[2:])
    assert f'config_name="{config}"' in script.read_text(), f"{script.name} no longer composes {config}.yaml"
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            args = get_args_parser().parse_args(given)
        except SystemExit:
            pytest.fail(f"Hydra's command line rejects {given}:\n{stderr.getvalue()}")
    if args.config_path or args.config_dir:
        pytest.fail(f"--config-path/--config-dir: {TEACH}")
    config = args.config_name or config
    overrides = OverridesParser.create().parse_overrides(args.overrides)  # a syntax error raises here

    kept, skipped = [], []
    for override in overrides:
        key = override.key_or_group
        if plugin_missing(override):
            # a Hydra plugin that is not installed here (e.g. the submitit launcher, `.[slurm]`)
            skipped.append(key.replace("/", "."))
        elif not any(key.startswith(f"{group}.") for group in skipped):  # that plugin's own settings
            kept.append(override)
    fixed = [o.input_line for o in kept if not o.is_sweep_override()]
    sweeps = [o for o in kept if o.is_sweep_override()]
    check = APP_CHECKS[config]

    for i, combo in enumerate(combinations(sweeps) if sweeps else [[]]):
        cfg = compose_app(config, [*fixed, *combo], tmp_path)
        multirun = args.multirun or str(cfg.hydra.mode) == "RunMode.MULTIRUN"
        if sweeps and not multirun:
            pytest.fail(f"sweep overrides {[o.input_line for o in sweeps]} without -m: Hydra refuses them")
        try:
            check(cfg)
        except Exception as err:
            raise AssertionError(f"{config}.yaml with {[*fixed, *combo]}: {type(err).__name__}: {err}") from err
        if i == 0 and multirun:
            for key in ("sweeper", "launcher"):
                if key not in skipped and "hydra" in cfg:
                    resolved(cfg.hydra, key)
            check_search_space(cfg, config, [*fixed, *combo], tmp_path)


def check_search_space(cfg: DictConfig, config: str, overrides: list[str], tmp_path: Path) -> None:
    """A sweeper's `params` (Optuna's search space) name existing keys and valid values: composed at
    their lower and at their upper bounds."""
    params = OmegaConf.select(cfg, "hydra.sweeper.params")
    if not params:
        return
    space = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    values = [sweep_values(o) if o.is_sweep_override() else [o.get_value_element_as_str()] for o in space]
    for end in (0, -1):
        chosen = [f"{o.get_key_element()}={v[end]}" for o, v in zip(space, values)]
        APP_CHECKS[config](compose_app(config, [*overrides, *chosen], tmp_path))


# ------------------------------------------------------------------------------ allowlisted commands


def allowlisted(argv: tuple[str, ...]) -> str | None:
    for prefix, why in ALLOWLIST.items():
        if len(argv) >= len(prefix) and all(fnmatch.fnmatchcase(w, p) for w, p in zip(argv, prefix)):
            return why
    return None


def check_allowlisted(argv: tuple[str, ...]) -> None:
    """What can be checked of a command that cannot run here: the files and extras it names."""
    if argv[0] == "pip" and tomllib is not None:
        extras = (tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]).get("optional-dependencies", {})
        for word in argv:
            match = re.fullmatch(r"\.\[([\w,-]+)\]", word)
            for extra in match.group(1).split(",") if match else []:
                assert extra in extras, f"pyproject.toml has no extra [{extra}] (it has {sorted(extras)})"
    elif argv[0] == "conda" and "-f" in argv:
        assert (ROOT / argv[argv.index("-f") + 1]).is_file()
    elif argv[0] == "bash":
        assert (ROOT / argv[1]).is_file(), f"{argv[1]}: no such script"


# ------------------------------------------------------------------------------ tests


def test_console_scripts_are_known():
    """Every console script of pyproject.toml is checked as the command it equals."""
    if tomllib is None:
        pytest.skip("tomllib is Python 3.11+")
    assert set(CONSOLE_SCRIPTS) == set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"])


def test_readme_has_commands():
    assert COMMANDS, "no command found in README.md's ```bash blocks"
    assert any(c.argv[:2] == ("python", "train.py") for c in COMMANDS)
    assert any(c.argv[:2] == ("python", "predict.py") for c in COMMANDS)


# ------------------------------------------------------------------------------ shell scripts

# `name=${1:?...}`, `name=${2:-default}`, `name=${VAR:-default}`: how the scripts take their arguments
_ASSIGNMENT = re.compile(r"(\w+)=\$\{(\w+)(?::([-?])([^}]*))?\}")


def script_commands(command: Command) -> list[Command]:
    """The python and bash commands of ``bash experiments/<script>.sh ARGS``, as that call runs them:
    positional parameters and ``${VAR:-default}`` settings substituted, ``"$@"`` the arguments left
    after the script's ``shift``, arrays and other variables as placeholders."""
    script = ROOT / command.argv[1]
    args = list(command.argv[2:])
    values: dict[str, str] = {}
    commands = []
    for _, text in logical_lines(1, script.read_text()):
        match = _ASSIGNMENT.fullmatch(text)
        if match:
            name, source, kind, default = match.groups()
            given = args[int(source) - 1] if source.isdigit() and int(source) <= len(args) else None
            values[name] = given if given is not None else (default if kind == "-" else PLACEHOLDER)
            continue
        if text.startswith("shift"):
            continue
        text = text.replace('"$@"', " ".join(shlex.quote(a) for a in args[_positional_count(script) :]))
        text = re.sub(r'"?\$\{\w+\[@\]\}"?', "", text)  # arrays: optional arguments
        text = re.sub(r"\$\{\w+:\+[^}]*\}", "", text)  # ${VAR:+word}: a word given only when VAR is set
        text = re.sub(r"\$\{?(\w+)\}?", lambda m: values.get(m.group(1), PLACEHOLDER), text)
        for words in split_commands(text):
            argv = strip_launcher(words)
            if argv and argv[0] in ("python", "bash"):
                commands.append(Command(command.line, tuple(words), tuple(argv)))
    return commands


def _positional_count(script: Path) -> int:
    """How many positional arguments the script takes before ``"$@"`` (its ``${N...}`` references)."""
    return max((int(n) for n in re.findall(r"\$\{(\d+)", script.read_text())), default=0)


# argv of the commands already checked: a command several guides show (or a script runs for
# several of them) is checked once, as every check depends on the words alone
_checked: set[tuple[str, ...]] = set()


def check_command(command: Command, monkeypatch, request, tmp_path: Path, depth: int = 0) -> None:
    argv = command.argv
    if argv in _checked:
        return
    _check_new_command(command, monkeypatch, request, tmp_path, depth)
    _checked.add(argv)


def _check_new_command(command: Command, monkeypatch, request, tmp_path: Path, depth: int) -> None:
    argv = command.argv
    if allowlisted(argv):
        check_allowlisted(argv)
    elif argv[0] == "bash" and len(argv) > 1 and fnmatch.fnmatchcase(argv[1], "experiments/*.sh"):
        script = ROOT / argv[1]
        assert script.is_file(), f"{command.guide} line {command.line}: {argv[1]}: no such script"
        syntax = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert syntax.returncode == 0, f"{argv[1]}: {syntax.stderr}"
        inner = script_commands(command)
        assert inner, f"{argv[1]} runs no python command"
        assert depth < 3, f"{argv[1]}: scripts calling scripts too deeply"
        for sub in inner:
            check_command(sub, monkeypatch, request, tmp_path, depth + 1)
    elif argv[0] == "python" and len(argv) > 1 and argv[1] in HYDRA_APPS:
        check_hydra_command(command, HYDRA_APPS[argv[1]][1], tmp_path)
    elif argv[0] == "python" and len(argv) > 2 and argv[1] == "-m" and argv[2] in HYDRA_MODULES:
        check_hydra_command(command, HYDRA_MODULES[argv[2]][1], tmp_path)
    elif argv[0] == "python" and len(argv) > 2 and argv[1] == "-m" and argv[2].startswith("tumorseg."):
        check_module_command(command, monkeypatch, request, tmp_path)
    elif argv[0] == "python" and len(argv) > 1 and fnmatch.fnmatchcase(argv[1], "experiments/*.py"):
        check_module_command(command, monkeypatch, request, tmp_path)
    else:
        pytest.fail(f"{command.guide} line {command.line}: unrecognised command {' '.join(argv)!r}; {TEACH}")


@pytest.mark.parametrize("command", COMMANDS, ids=[c.id for c in COMMANDS])
def test_readme_command(command: Command, monkeypatch, request, tmp_path):
    check_command(command, monkeypatch, request, tmp_path)


def test_quick_commands_run_for_real(tiny_dataset, capsys):
    """`python -m tumorseg.phantoms` (the fixture, at a tiny size), then `python -m tumorseg.data
    check` on its output and `python -m tumorseg.models.summary`, whatever the README shows of them."""
    from tumorseg.data.__main__ import main as data_main
    from tumorseg.models.summary import main as summary_main

    assert data_main(["check", str(tiny_dataset)]) == 0
    assert "No problems found" in capsys.readouterr().out
    assert summary_main([]) == 0
    assert "| `arunet3d` | `light` |" in capsys.readouterr().out
