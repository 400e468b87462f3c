"""The command-line form of the config dataclasses, built with jsonargparse.

Every field of a command's dataclass becomes an option named by its key (`--lr`,
`--model.vlm.answer_mode`, `--backend.kind`), typed with its type hint (a `one_of` field lists its
choices), documented with the comment written beside it in the source and shown with its default.
A YAML file (`--config`) sets any of them and the options after it override it. The model's
settings (`--model.*`) default to the values of the chosen preset, not to the dataclass defaults,
so `--model.vlm.answer_mode` means the same in a file, on the command line and in `--help`.

Types and choices are checked here while parsing; bounds and whatever the dataclasses check in
`__post_init__` are checked when the parsed mapping is built into the dataclass
(`llmseg_model.config.from_mapping`). Nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import io
import json
import re
import tokenize
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from llmseg_model.config import BOUNDS, LLMSegConfig

BOOL_WORDS = {"true", "false", "yes", "no", "on", "off", "1", "0"}


def field_comments(cls: type) -> dict[str, str]:
    """The comment of each field of a dataclass (and of the dataclasses it extends) as written in
    its source: the comment lines right above the field and the comment after it, in one line."""
    found: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            try:
                path = inspect.getsourcefile(klass)
            except TypeError:
                continue
            if path:
                found.update(source_comments(path).get(klass.__name__, {}))
    return found


@functools.lru_cache(maxsize=None)
def source_comments(path: str) -> dict[str, dict[str, str]]:
    """Class name -> field -> comment, for the classes defined at the top level of a source file
    (read once: --help and every parse document the fields with it)."""
    source = Path(path).read_text()
    tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    comment: dict[int, str] = {}  # line -> its comment
    code: set[int] = set()  # lines holding code
    for token in tokens:
        if token.type == tokenize.COMMENT:
            comment[token.start[0]] = token.string.lstrip("#").strip()
        elif token.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER):
            code.update(range(token.start[0], token.end[0] + 1))
    found: dict[str, dict[str, str]] = {}
    current = ""  # the class whose body is being read
    for i, token in enumerate(tokens[:-1]):
        following = tokens[i + 1]
        if token.type == tokenize.NAME and token.start[1] == 0:
            current = following.string if token.string == "class" else ""
            continue
        if not (current and token.type == tokenize.NAME and token.start[1] == 4
                and following.type == tokenize.OP and following.string == ":"):
            continue
        first = token.start[0]
        last = next(t.start[0] for t in tokens[i:] if t.type == tokenize.NEWLINE)
        above = []
        line = first - 1
        while line in comment and line not in code:
            above.insert(0, comment[line])
            line -= 1
        after = [comment[n] for n in range(first, last + 1) if n in comment]
        if above or after:
            found.setdefault(current, {})[token.string] = " ".join(above + after)
    return found


def describe(cls: type) -> str:
    """The first paragraph of a class docstring, on one line."""
    return " ".join((inspect.getdoc(cls) or "").split("\n\n")[0].split())


def _bounds_text(metadata: Any) -> str:
    parts = [f"{symbol} {metadata[name]}" for name, (_, symbol) in BOUNDS.items() if name in metadata]
    return f" ({', '.join(parts)})" if parts else ""


def _plain(value: Any) -> Any:
    """Tuples as lists and dataclasses as mappings, as YAML and JSON write them."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    return json.loads(json.dumps(value, default=str))


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _is_dataclass_list(hint: Any) -> bool:
    args = typing.get_args(hint)
    return typing.get_origin(hint) is list and bool(args) and dataclasses.is_dataclass(args[0])


@dataclasses.dataclass
class Option:
    """One option of a parser: its key and how the command line may spell it."""

    key: str
    # "bool" (`--key` alone is true), "list" (repeatable: `--key a --key b`), "items" (a list of
    # mappings; None until given), "value"
    kind: str


def add_fields(parser: Any, cls: type, prefix: str = "", defaults: dict[str, Any] | None = None,
               skip: Sequence[str] = (), title: str | None = None) -> list[Option]:
    """Add one option per field of dataclass `cls` to a jsonargparse parser, nested dataclasses as
    dotted keys in a group of their own; `defaults` (a mapping like `dataclasses.asdict` gives)
    replaces the dataclass defaults. Returns the options added."""
    hints = typing.get_type_hints(cls)
    comments = field_comments(cls)
    container = parser.add_argument_group(title, description=describe(cls)) if title else parser
    options: list[Option] = []
    nested = []
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        hint, key = hints[f.name], prefix + f.name
        default = defaults[f.name] if defaults is not None and f.name in defaults else _plain(_default(f))
        if dataclasses.is_dataclass(hint):
            nested.append((hint, key, default))
            continue
        text = comments.get(f.name, "") + _bounds_text(f.metadata)
        choices = f.metadata.get("choices")
        if choices and typing.get_origin(hint) is list:
            kind, hint = "list", list[Literal[tuple(choices)]]
        elif choices:
            kind, hint = "value", Literal[tuple(choices)]
        elif _is_dataclass_list(hint):
            # None until given: jsonargparse would merge the items given with a default list's.
            shown = json.dumps(default)
            text = f"{text} (a YAML/JSON list of mappings; default: {shown if len(shown) < 200 else shown[:200] + '...'})"
            kind, hint, default = "items", Optional[hint], None
        elif hint is bool:
            kind = "bool"
        elif typing.get_origin(hint) is list:
            kind = "list"
        else:
            kind = "value"
        container.add_argument(f"--{key}", type=hint, default=default, help=text.strip() or None)
        options.append(Option(key, kind))
    for hint, key, default in nested:
        options += add_fields(parser, hint, key + ".", default, title=key)
    return options


def add_model_fields(parser: Any, base: LLMSegConfig, prefix: str = "model.",
                     sections: Sequence[str] | None = None) -> list[Option]:
    """The LLMSegConfig settings as `--model.<part>.<field>` options whose defaults are `base`'s
    values (the chosen preset), one group per part; `sections` keeps only some parts."""
    defaults = base.to_dict()
    options: list[Option] = []
    for f in dataclasses.fields(LLMSegConfig):
        if f.name == "preset" or (sections is not None and f.name not in sections):
            continue
        part = getattr(base, f.name)
        options += add_fields(parser, type(part), f"{prefix}{f.name}.", defaults[f.name],
                              title=f"{prefix}{f.name} (values of preset {base.preset!r} unless given)")
    return options


def normalise_argv(argv: Sequence[str], options: Sequence[Option]) -> list[str]:
    """The command line as jsonargparse reads it, with the spellings people type: `--cache-dir`
    for `--cache_dir`, `--skip-errors` alone for `--skip_errors true`, `--no-progress` for
    `--progress false`, and a list option given several times (`--data A --data B`) as one list."""
    kinds = {o.key: o.kind for o in options}
    out: list[str] = []
    listed: set[str] = set()
    args = list(argv)
    i = 0
    while i < len(args):
        token = args[i]
        i += 1
        if token == "--":
            out += args[i - 1:]
            break
        if not token.startswith("--"):
            out.append(token)
            continue
        name, eq, value = token[2:].partition("=")
        append = name.endswith("+")
        key = name.rstrip("+").replace("-", "_")
        if key.startswith("no_") and kinds.get(key[3:]) == "bool" and not eq:
            out.append(f"--{key[3:]}=false")
            continue
        kind = kinds.get(key)
        if kind == "bool" and not eq:
            if i < len(args) and args[i].lower() in BOOL_WORDS:
                out.append(f"--{key}={args[i]}")
                i += 1
            else:
                out.append(f"--{key}=true")
            continue
        if kind == "list" and not append:
            values = [value] if eq else []
            while not eq and i < len(args) and not args[i].startswith("-"):
                values.append(args[i])  # `--methods llmseg random`: the following words
                i += 1
            if len(values) == 1 and values[0].lstrip().startswith("["):
                out.append(f"--{key}={values[0]}")  # a YAML / JSON list
                continue
            for value in values:
                out.append(f"--{key}+={value}" if key in listed else f"--{key}={json.dumps([value])}")
                listed.add(key)
            if values:
                continue
        out.append(f"--{key}{'+' if append else ''}{eq}{value}" if eq else f"--{key}{'+' if append else ''}")
    return out


def prescan(argv: Sequence[str], keys: Sequence[str]) -> dict[str, Any]:
    """The values that `keys` (top-level settings) will have, read from the command line and its
    --config files in order, before the parser that depends on them is built."""
    found: dict[str, Any] = {}
    args = list(argv)
    for i, token in enumerate(args):
        name, eq, value = token[2:].partition("=") if token.startswith("--") else ("", "", "")
        name = name.replace("-", "_")
        if not eq and i + 1 < len(args):
            value = args[i + 1]
        if name == "config" and value:
            path = Path(value)
            data = yaml.safe_load(path.read_text()) if path.is_file() else None
            if isinstance(data, dict):
                found.update({k: data[k] for k in keys if k in data})
        elif name in keys and value:
            found[name] = value
    return found


def clean_message(message: str) -> str:
    """A jsonargparse or config error as one line naming the option."""
    text = " ".join(str(message).split())
    text = re.sub(r'Parser key "([^"]+)":', r"--\1:", text)
    text = re.sub(r"<class '(?:[\w.]+\.)?(\w+)'>", r"\1", text)
    text = re.sub(r"Expected a typing\.Literal\[(.*?)\]\. Got value: ", r"expected one of \1; got ", text)
    return re.sub(r"Expected a (\S+)\. Got value: ", r"expected \1; got ", text)


def build_parser(prog: str, description: str, epilog: str, version: str) -> Any:
    """An empty jsonargparse parser with the options every command shares."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(
        prog=prog, usage="%(prog)s [--config FILE] [--KEY VALUE ...] [--print_config] [-v | -q]",
        description=description, epilog=epilog, exit_on_error=False, allow_abbrev=False,
        print_config=None, default_env=False,
    )
    parser.add_argument("--config", action=ActionConfigFile, help="YAML file of settings (any key below); "
                        "options after it override it")
    parser.add_argument("--print_config", "--print-config", type=bool, default=False,
                        help="print the checked settings as YAML (a file for --config) and exit")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more log detail (debug lines, library warnings and progress bars, tracebacks)")
    parser.add_argument("-q", "--quiet", action="count", default=0, help="warnings and errors only")
    parser.add_argument("--version", action="version", version=version)
    return parser


def parse_namespace(parser: Any, argv: Sequence[str], options: Sequence[Option]) -> dict[str, Any]:
    """Parse a command line into a nested mapping; bad input raises ValueError with one line."""
    from jsonargparse import ArgumentError

    try:
        namespace = parser.parse_args(normalise_argv(argv, [*options, Option("print_config", "bool")]))
    except ArgumentError as err:
        raise ValueError(clean_message(str(err))) from None
    except (yaml.YAMLError, OSError) as err:
        raise ValueError(clean_message(f"--config: {err}")) from None
    return namespace.as_dict()


def to_yaml(config: Any) -> str:
    """A config dataclass as YAML, in field order (what `--print_config` writes)."""
    return yaml.safe_dump(_plain(config), sort_keys=False, allow_unicode=True)


def loader(cls: type) -> Callable[[dict[str, Any]], Any]:
    """How a command's mapping of settings becomes its dataclass: the class's own `from_dict`
    where it has one (it may do more, e.g. resolve data paths), else `from_mapping`."""
    from_dict = getattr(cls, "from_dict", None)
    if from_dict is not None:
        return from_dict
    from llmseg_model.config import from_mapping

    return lambda data: from_mapping(cls, data)
