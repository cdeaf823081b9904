"""Command lines derived from the config tree: argparse flags (with their defaults in --help), a
config from parsed flags, and a config back into a child's argv (what `minedraft up` runs)."""

from __future__ import annotations

import argparse
import dataclasses

from minedraft.config import ROLES

_TYPES = {"int": int, "float": float, "str": str, "bool": bool, "list": str}


def _leaf_type(f: dataclasses.Field) -> type:
    # annotations are strings here (`from __future__ import annotations`): "int | None" -> int
    return _TYPES[str(f.type).split("|")[0].strip()]


def _is_group(value) -> bool:
    return dataclasses.is_dataclass(value) and not isinstance(value, type)


def _flags(f: dataclasses.Field) -> tuple:
    return f.metadata.get("flags") or ("--" + f.name.replace("_", "-"),)


def _help(f: dataclasses.Field, default) -> str:
    m = f.metadata
    if m.get("env"):
        shown = f"{default}, or ${m['env']}"
    elif m.get("shown"):
        shown = m["shown"]
    elif isinstance(default, bool):
        shown = "on" if default else "off"
    else:
        shown = default
    return f"{m['help']} (default: {shown})".replace("%", "%%")  # argparse %-formats help


def leaves(cfg):
    """(field, value) of every flag in cfg, nested groups included, in declaration order."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if _is_group(value):
            yield from leaves(value)
        else:
            yield f, value


def add_arguments(parser: argparse.ArgumentParser, cfg, _root=None) -> None:
    """Add cfg's fields as flags (defaults: cfg's values); each nested config is a group in --help."""
    root = _root or parser
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if _is_group(value):
            add_arguments(root.add_argument_group(type(value).__doc__.split("\n")[0]), value, root)
            continue
        kwargs = dict(dest=f.name, default=value, help=_help(f, value))
        kind = _leaf_type(f)
        if f.metadata.get("append"):
            kwargs["action"] = "append"
        elif kind is bool:
            # --x/--no-x, unless the field names its one flag (to_argv writes the same)
            negatable = value is None or (value and not f.metadata.get("flags"))
            kwargs["action"] = (argparse.BooleanOptionalAction if negatable else
                                "store_false" if value else "store_true")
        else:
            kwargs.update(type=f.metadata.get("parse") or kind, choices=f.metadata.get("choices"),
                          metavar=f.metadata.get("metavar"))
        parser.add_argument(*_flags(f), **kwargs)


def from_flat(base, values: dict):
    """base (a config, or a config class for its defaults) with the fields named in values replaced;
    validated on the way (ValueError naming the field)."""
    base = base() if isinstance(base, type) else base
    changes = {}
    for f in dataclasses.fields(base):
        value = getattr(base, f.name)
        if _is_group(value):
            changes[f.name] = from_flat(value, values)
        elif f.name in values:
            changes[f.name] = values[f.name]
    return dataclasses.replace(base, **changes)


def flat(cfg) -> dict:
    """Every flag's value by field name: the argparse namespace a service's code reads."""
    return {f.name: value for f, value in leaves(cfg)}


def to_argv(cfg) -> list[str]:
    """The flags that give cfg to a process that parses them: values other than the defaults, and
    those whose default comes from the environment (the child's could differ)."""
    defaults = dict(leaves(type(cfg)()))
    out = []
    for f, value in leaves(cfg):
        if not f.metadata.get("argv", True) or (value == defaults[f] and not f.metadata.get("env")):
            continue
        name = [x for x in _flags(f) if x.startswith("--")][0]
        if isinstance(value, bool) and f.metadata.get("flags"):
            out.append(name)  # a flag of its own (store_true / store_false): present means not the default
        elif isinstance(value, bool):
            out.append(("--" if value else "--no-") + f.name.replace("_", "-"))
        elif isinstance(value, list):
            for item in value:
                out += [name, str(item)]
        else:
            out += [name, str(value)]
    return out


def parse(parser: argparse.ArgumentParser, cls, argv=None):
    """Parse argv into a validated cls: (config, namespace); a bad value exits like a bad flag."""
    ns = parser.parse_args(argv)
    try:
        return from_flat(cls, vars(ns)), ns
    except ValueError as exc:
        parser.error(str(exc))


def service_parser(role: str, parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """`minedraft serve ROLE`'s flags (the service's own build_parser and the CLI both use it)."""
    cls = ROLES[role]
    if parser is None:
        parser = argparse.ArgumentParser(prog=f"minedraft serve {role}", description=cls.__doc__)
    add_arguments(parser, cls())
    return parser


def memory_argv(args) -> list[str]:
    """The KV cache flags in parsed args (`up`'s), as a worker's command line (defaults left out)."""
    from minedraft.config import CacheConfig

    return to_argv(from_flat(CacheConfig, vars(args)))
