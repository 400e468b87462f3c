"""Shared behaviour of the command-line entry points (train, benchmark, demo, precompute, datagen,
convert): one way to give settings, one log format, one answer to bad input.

A `Command` names a settings dataclass and the function that runs it; `run_command` parses the
command line over it (llmseg_model.configuration), checks every value and path before anything
heavy is imported or loaded, then runs. Bad input ends with one line on stderr and exit status 2,
and whatever output folder the refused run had created is removed again.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import sys
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmseg_model import __version__

logger = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
PACKAGE_LOGGERS = ("llmseg_model", "llmseg_ros")
# What a refused run raises: a bad setting, a missing file, a missing key in an input file.
BAD_INPUT: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, NotADirectoryError, KeyError)
EPILOG = (
    "Settings come from the dataclass defaults (the preset's values for --model.*), then each --config "
    "YAML file, then the options after it. Keys are dotted (--model.proposals.top_k 20); '-' may "
    "stand for '_' (--cache-dir); a true/false option alone means true and --no-KEY false; a list option "
    "may be repeated (--data A --data B) or given as a YAML list."
)


@dataclass
class Command:
    """One command-line program: its settings dataclass and the function that runs them."""

    name: str  # console script, e.g. "llmseg-train"
    module: str  # module run by `python -m`, e.g. "llmseg_model.train"
    config: type  # the settings dataclass
    run: Callable[[Any], Any]  # does the work with the checked settings; its result is returned
    description: str = ""
    # Field holding LLMSegConfig overrides: offered as --<field>.<part>.<setting> with the values of
    # the model the command starts from (`base_model`) as defaults.
    model_field: str = ""
    model_sections: tuple[str, ...] | None = None  # LLMSegConfig parts offered (None: all)
    # The model the --model.* defaults come from, given the prescanned `prescan_keys` values (a
    # preset name by default).
    base_model: Callable[[dict[str, Any]], Any] | None = None
    prescan_keys: tuple[str, ...] = ("preset",)
    require_config: str = ""  # when set: the message if no --config file is given
    check: Callable[[Any], None] | None = None  # paths and cross-checks, before anything loads
    outputs: Callable[[Any], Sequence[str | Path]] = lambda config: ()  # folders the run writes
    # Whether an output folder a failed run created holds work worth keeping (checkpoints, a
    # resumable cache); otherwise it is removed.
    keep: Callable[[Path], bool] | None = None
    uses_transformers: bool = False  # quiet transformers' logs and progress bars
    bad_input: tuple[type[BaseException], ...] = BAD_INPUT

    def run_cli(self, argv: Sequence[str] | None = None) -> Any:
        """Parse the command line, run, return what the run returns (bad input: exit status 2)."""
        return run_command(self, argv)

    def main(self, argv: Sequence[str] | None = None, prog: str | None = None) -> int:
        """Console entry point: `name` in pyproject's scripts, or `python -m module` (`prog`: the
        name usage lines show, for a wrapper such as `ros2 run llmseg_ros train`)."""
        run_command(self, argv, prog)
        return 0


@dataclass
class Parsed:
    """A checked command line."""

    config: Any
    verbosity: int  # -1 quiet, 0 normal, 1+ verbose
    print_config: bool


def program_name(command: Command) -> str:
    """How the user called the program: its console script, else `python -m module`."""
    return command.name if Path(sys.argv[0]).name == command.name else f"python -m {command.module}"


def _default_base_model(found: dict[str, Any], default_preset: str) -> Any:
    from llmseg_model.config import preset_config

    preset = found.get("preset", default_preset)
    if not isinstance(preset, str):
        raise ValueError(f"--preset must be a preset name or an llmseg_config.json, got {preset!r}")
    return preset_config(preset)


def parse_command(command: Command, argv: Sequence[str], prog: str | None = None) -> Parsed:
    """Parse and check a command line into the command's settings dataclass; bad input raises
    one of BAD_INPUT with a one-line message; --help and --version exit."""
    from llmseg_model import configuration as conf

    prog = prog or program_name(command)
    parser = conf.build_parser(prog, command.description, EPILOG, f"{prog} {__version__}")
    skip = (command.model_field,) if command.model_field else ()
    options = conf.add_fields(parser, command.config, skip=skip)
    if command.model_field:
        found = conf.prescan(argv, command.prescan_keys)
        preset_field = {f.name: f for f in dataclasses.fields(command.config)}.get("preset")
        default_preset = preset_field.default if preset_field is not None else "tiny"
        base = command.base_model(found) if command.base_model else _default_base_model(found, default_preset)
        options += conf.add_model_fields(parser, base, f"{command.model_field}.", command.model_sections)
    data = conf.parse_namespace(parser, argv, options)
    config_files = data.pop("config", None)
    print_config = bool(data.pop("print_config", False))
    verbosity = data.pop("verbose", 0) - data.pop("quiet", 0)
    for option in options:
        if option.kind == "items" and "." not in option.key and data.get(option.key) is None:
            data.pop(option.key, None)  # not given: the dataclass default
    if command.require_config and not config_files:
        raise ValueError(command.require_config)
    config = conf.loader(command.config)(data)
    if command.check is not None and not print_config:  # a config may be printed where its files are not
        command.check(config)
    return Parsed(config, verbosity, print_config)


def configure_logging(verbosity: int, uses_transformers: bool = False) -> None:
    """One log format for every command; -v shows debug lines, library warnings and progress
    bars, -q warnings and errors only. transformers' own controls keep its weight-loading bars
    and notices quiet unless -v."""
    level = logging.DEBUG if verbosity > 0 else logging.WARNING if verbosity < 0 else logging.INFO
    logging.basicConfig(level=logging.INFO if verbosity >= 0 else logging.WARNING, format=LOG_FORMAT)
    for name in PACKAGE_LOGGERS:
        logging.getLogger(name).setLevel(level)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if not uses_transformers:
        return
    from transformers.utils import logging as hf_logging

    if verbosity > 0:
        hf_logging.set_verbosity_warning()
        hf_logging.enable_progress_bar()
        return
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    # peft asks the model for this deprecated property when it wraps it; the notice is about
    # peft, not about anything a user of this package can change.
    warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)


def error_line(error: BaseException) -> str:
    """An error as one line: a KeyError's key message unquoted, several lines joined."""
    text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return "; ".join(lines) or type(error).__name__


def refuse(prog: str, error: BaseException, verbosity: int) -> SystemExit:
    """Write the one-line answer to bad input (and the traceback with -v); the exit to raise."""
    if verbosity > 0:
        traceback.print_exception(error, file=sys.stderr)
    sys.stderr.write(f"{prog}: error: {error_line(error)}\n")
    sys.stderr.flush()
    return SystemExit(2)


def _argv_verbosity(argv: Sequence[str]) -> int:
    """-v / -q counted before parsing, so that a parse error already honours them."""
    count = 0
    for token in argv:
        if token in ("--verbose", "--quiet"):
            count += 1 if token == "--verbose" else -1
        elif token.startswith("-") and not token.startswith("--") and set(token[1:]) <= {"v", "q"}:
            count += token.count("v") - token.count("q")
    return count


def require_existing(key: str, value: str, kind: str, folder: bool | None = None) -> Path:
    """A path setting that must exist (a folder or a file when `folder` says so); the error names
    the setting."""
    if not value:
        raise FileNotFoundError(f"{key} is not set: give the {kind}")
    path = Path(value).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{key} = {value!r} does not exist ({kind})")
    if folder is True and not path.is_dir():
        raise NotADirectoryError(f"{key} = {value!r} is not a folder ({kind})")
    if folder is False and not path.is_file():
        raise FileNotFoundError(f"{key} = {value!r} is not a file ({kind})")
    return path


def check_data_paths(specs: Sequence[Any], key: str) -> None:
    """The files and folders that data set specs (llmseg_model.data.mixing.DatasetSpec) name exist."""
    for i, spec in enumerate(specs):
        for name in ("path", "image_root"):
            if getattr(spec, name):
                require_existing(f"{key}[{i}].{name}", getattr(spec, name), f"{spec.kind} data")


def data_specs(texts: Sequence[str], key: str = "data") -> list[Any]:
    """Data sets given in their short form (`DatasetSpec.parse`: kind:target[,key=value...]);
    an error names the entry."""
    from llmseg_model.data.mixing import DatasetSpec

    specs = []
    for i, text in enumerate(texts):
        try:
            specs.append(DatasetSpec.parse(text))
        except ValueError as err:
            raise ValueError(f"{key}[{i}] {text!r}: {err}") from None
    return specs


def new_folders(paths: Sequence[str | Path]) -> list[Path]:
    """The output folders that do not exist yet (the ones a refused run may remove again)."""
    return [Path(p) for p in paths if str(p) not in ("", ".") and not Path(p).exists()]


def remove_new(folders: Sequence[Path], keep: Callable[[Path], bool] | None) -> None:
    """Remove the folders this run created, except those holding work worth keeping."""
    for folder in folders:
        if folder.is_dir() and not (keep is not None and keep(folder)):
            shutil.rmtree(folder, ignore_errors=True)
            logger.info("removed %s, which this refused run had created", folder)


def run_command(command: Command, argv: Sequence[str] | None = None, prog: str | None = None) -> Any:
    """Parse, check and run a command; returns what its run returns (None for --print_config).
    Bad input exits with status 2 after one line on stderr, leaving no new output folder."""
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = prog or program_name(command)
    verbosity = _argv_verbosity(argv)
    try:
        parsed = parse_command(command, argv, prog)
    except command.bad_input as err:
        raise refuse(prog, err, verbosity) from None
    if parsed.print_config:
        from llmseg_model.configuration import to_yaml

        sys.stdout.write(to_yaml(parsed.config))
        return None
    configure_logging(parsed.verbosity, command.uses_transformers)
    created = new_folders(command.outputs(parsed.config))
    try:
        return command.run(parsed.config)
    except command.bad_input as err:
        remove_new(created, command.keep)
        raise refuse(prog, err, parsed.verbosity) from None
