"""Reading a settings file: YAML, TOML or JSON by its extension, strict about duplicates.

Theory of operation
-------------------
``read_file`` returns a file's top-level mapping, unchecked: ``config``
checks each value against its setting. What this module adds to the three
parsers is the same promise for all of them: an unreadable file, bad syntax
or a key given twice is a ``ConfigError`` that names the file, the line
where the parser says, and the key. (YAML and Python's ``json`` would
silently keep the last of two values; ``tomllib`` refuses, but without
naming the key.)
"""
from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import yaml

from .protocol import DuplicateKey, no_duplicate_keys


class ConfigError(Exception):
    """A config file or a command-line value is unusable; the message says where and why."""


def type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "mapping"
    return type(value).__name__


def show(value: object) -> str:
    """Show a value as a config file would spell it, shortened."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# -- Reading files -------------------------------------------------------------

class _DuplicateKey(Exception):
    def __init__(self, key: object, line: int, first_line: int) -> None:
        super().__init__(key, line, first_line)
        self.key = key
        self.line = line
        self.first_line = first_line


class _YamlLoader(yaml.SafeLoader):
    """``yaml.safe_load`` that refuses duplicate keys instead of keeping the last."""

    def construct_mapping(self, node: yaml.MappingNode,
                          deep: bool = False) -> dict[Any, Any]:
        first_line: dict[Any, int] = {}
        for key_node, _value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue                  # ``<<: *base`` may repeat keys on purpose
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                continue                  # the base class reports unhashable keys
            line = key_node.start_mark.line + 1
            if key in first_line:
                raise _DuplicateKey(key, line, first_line[key])
            first_line[key] = line
        return super().construct_mapping(node, deep=deep)


def read_file(path: str) -> dict[Any, Any]:
    """Parse the file at ``path`` by its extension; return its top-level mapping."""
    suffix = Path(path).suffix.lower()
    if suffix not in (".yaml", ".yml", ".toml", ".json"):
        kind = f"'{suffix}'" if suffix else "(no extension)"
        raise ConfigError(f"{path}: unknown config file type {kind}; "
                          f"use .yaml, .yml, .toml or .json")
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8-sig")   # -sig: skip the BOM some editors write
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8: {exc}") from None
    if suffix == ".toml":
        try:
            return tomllib.loads(text)       # always a table: no top-level check needed
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {_toml_error(text, str(exc))}") from None
    if suffix == ".json":
        parsed = _parse_json(path, text)
    else:
        parsed = _parse_yaml(path, text)
        if parsed is None:
            return {}                     # an empty YAML file: no settings
    if not isinstance(parsed, dict):
        raise ConfigError(f"{path}: top level must be a mapping of setting names "
                          f"to values, got {type_name(parsed)}")
    return parsed


def _toml_error(text: str, error: str) -> str:
    """tomllib's error, naming the key where it only says it "Cannot overwrite a value"."""
    found = re.search(r"Cannot overwrite a value \(at line (\d+),", error)
    lines = text.splitlines()
    if found is None or not 0 < int(found.group(1)) <= len(lines):
        return f"invalid TOML: {error}"
    line = int(found.group(1))
    key = lines[line - 1].split("=", 1)[0].strip().strip("\"'")
    first = next((number for number, earlier in enumerate(lines[:line - 1], 1)
                  if earlier.split("=", 1)[0].strip().strip("\"'") == key), None)
    since = f" (first set on line {first})" if first is not None else ""
    return f"line {line}: key {show(key)}: duplicate key{since}"


def _parse_yaml(path: str, text: str) -> Any:
    try:
        return yaml.load(text, Loader=_YamlLoader)
    except _DuplicateKey as dup:
        raise ConfigError(f"{path}: line {dup.line}: key {show(dup.key)}: duplicate key "
                          f"(first set on line {dup.first_line})") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        place = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(f"{path}: invalid YAML: {place}{exc.problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None


def _parse_json(path: str, text: str) -> Any:
    try:
        return json.loads(text, object_pairs_hook=no_duplicate_keys)
    except DuplicateKey as exc:
        raise ConfigError(f"{path}: key {show(exc.key)}: duplicate key") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: invalid JSON: {exc}") from None
