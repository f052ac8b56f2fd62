"""protocol.yamlconf: strict YAML for config files and key-path errors, including the
hostile keys an attack run found (unhashable keys crashed with a TypeError traceback)."""

from __future__ import annotations

from typing import Literal

import msgspec
import pytest

from protocol.yamlconf import ConfigValueError, check_known_keys, convert_config, load_yaml


class Camera(msgspec.Struct, forbid_unknown_fields=True):
    camera_id: str
    rtsp_url: str = ""


class Config(msgspec.Struct, forbid_unknown_fields=True):
    site_id: str = ""
    cameras: list[Camera] | None = None
    pods: dict[str, str] = {}


@pytest.mark.parametrize("text,kind,line,column", [
    ("site_id: s\n[a]: 1\n", "list", 2, 1),
    ("site_id: s\n{a: 1}: x\n", "dict", 2, 1),
    ("? [a, b]\n: x\n", "list", 1, 3),
    ("site_id: s\n!!set {a}: x\n", "set", 2, 1),
    ("cameras: [{camera_id: c, [q]: y}]\n", "list", 1, 26),
])
def test_a_key_that_is_not_a_plain_value_is_a_yaml_error_with_its_place(text, kind, line, column):
    with pytest.raises(ValueError) as ei:
        load_yaml(text)
    assert str(ei.value) == f"YAML error at line {line}, column {column}: a key must be a plain value, not a {kind}"


@pytest.mark.parametrize("text,path,what", [
    ("on: x\n", "$.True", "the boolean true"),
    ("no: x\n", "$.False", "the boolean false"),
    ("null: x\n", "$.None", "null"),
    ("1.5: x\n", "$.1.5", "the number 1.5"),
])
def test_a_key_yaml_reads_as_a_boolean_null_or_number_says_so(text, path, what):
    with pytest.raises(ConfigValueError) as ei:
        check_known_keys(load_yaml(text), Config)
    assert ei.value.path == path and ei.value.reason.startswith(f"unknown key: YAML read it as {what} ")


def test_unknown_keys_are_found_at_any_depth_with_a_suggestion():
    with pytest.raises(ConfigValueError) as ei:
        check_known_keys(load_yaml("cameras: [{camera_id: a}, {camera_id: b, rtsp_urll: x}]\n"), Config)
    assert (ei.value.path, ei.value.reason) == ("$.cameras[1].rtsp_urll", "unknown key; did you mean 'rtsp_url'?")
    check_known_keys(load_yaml("cameras: [{camera_id: a}]\npods: {any-name: x}\n"), Config)  # dict keys are data


def test_a_mapping_key_of_the_wrong_type_names_the_mapping():
    with pytest.raises(ConfigValueError) as ei:
        convert_config(load_yaml("pods: {1: 'http://x:1'}\n"), Config)
    assert (ei.value.path, ei.value.reason) == ("$.pods", "a key: Expected `str`, got `int`")


def test_duplicate_keys_and_aliases_are_refused():
    with pytest.raises(ValueError, match="duplicate key 'a'"):
        load_yaml("a: 1\na: 2\n")
    with pytest.raises(ValueError, match="aliases"):
        load_yaml("a: &x 1\nb: *x\n")


class Choice(msgspec.Struct, forbid_unknown_fields=True):
    mode: Literal["fast", "safe"] = "safe"
    parts: list[Camera | None] | None = None


class Outer(msgspec.Struct, forbid_unknown_fields=True):
    discovery: Literal["static", "localapi"] = "static"
    inner: list[Choice] = []


@pytest.mark.parametrize("data,path,choices", [
    ({"discovery": "statik"}, "$.discovery", "localapi, static"),  # msgspec sorts them
    ({"inner": [{}, {"mode": "quick"}]}, "$.inner[1].mode", "fast, safe"),
])
def test_a_bad_choice_lists_the_allowed_values(data, path, choices):
    """A newcomer's `discovery: statik` said only "Invalid enum value"."""
    with pytest.raises(ConfigValueError) as ei:
        convert_config(data, Outer)
    assert (ei.value.path, ei.value.reason) == (path, f"Invalid enum value {data_value(data)!r}; one of: {choices}")


def data_value(data):
    return data.get("discovery") or data["inner"][1]["mode"]
