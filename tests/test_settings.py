"""fl_stream.settings: rules, validation, mappings, generated command lines; the three users."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from fl_stream import settings
from fl_stream.centralized.trainer import CentralizedConfig
from fl_stream.cli import build_parser
from fl_stream.flower.config import ConfigError, RunConfig
from fl_stream.monitor.protocol import RELAY_TOKEN_ENV
from fl_stream.settings import (
    BATCH_SIZE,
    FRACTION,
    ORIGIN,
    PORT,
    POSITIVE_FRACTION,
    POSITIVE_INT,
    POSITIVE_NUMBER,
    WS_URL,
    OneLineErrorParser,
    SettingError,
    add_arguments,
    at_least,
    finite_at_least,
    from_mapping,
    from_namespace,
    one_of,
    setting,
    validate,
)
from relay.config import DATA_DIR_ENV, RelayConfig, parse_args

ROOT = Path(__file__).resolve().parent.parent

# --------------------------------------------------------------------------- rules

RULE_CASES = [
    (POSITIVE_INT, [1, 10**9], [0, -1]),
    (at_least(0, "0 never stops"), [0, 5], [-1]),
    (BATCH_SIZE, [2, 512], [1, 0]),
    (finite_at_least(0), [0.0, 0.5], [-0.1, math.inf, math.nan]),
    (POSITIVE_NUMBER, [1e-9, 3.0], [0.0, -1.0, math.inf, math.nan]),
    (FRACTION, [0.0, 0.5, 1.0], [-0.01, 1.01, math.nan]),
    (POSITIVE_FRACTION, [0.01, 1.0], [0.0, 1.5]),
    (PORT, [0, 8765, 65535], [-1, 65536]),
    (one_of(("iid", "dirichlet")), ["iid", "dirichlet"], ["IID", "shards", ""]),
    (
        WS_URL,
        ["", "ws://127.0.0.1:8765", "wss://relay.example/path"],
        ["http://127.0.0.1:8765", "ws://", "localhost:8765", "ws://[::1"],
    ),
    (
        ORIGIN,
        ["http://myhost:8080", "https://dash.example"],
        ["http://myhost:8080/", "myhost:8080", "ftp://host", "http://host/path", "http://"],
    ),
]


@pytest.mark.parametrize(("rule", "good", "bad"), RULE_CASES)
def test_named_rules_accept_their_range_and_refuse_the_rest(rule, good, bad):
    assert [rule.accepts(value) for value in good] == [True] * len(good)
    assert [rule.accepts(value) for value in bad] == [False] * len(bad)


def test_rule_texts_say_what_is_accepted():
    assert BATCH_SIZE.expected == "an integer >= 2 (BatchNorm needs two examples)"
    assert one_of(("min", "max")).expected == "one of min, max"
    assert one_of(("min", "max")).choices == ("min", "max")
    assert finite_at_least(0).expected == "a finite number >= 0"


# --------------------------------------------------------------------------- a toy settings class


@dataclass(frozen=True)
class Toy:
    count: int = setting(2, check=POSITIVE_INT, help="how many", group="sizes")
    ratio: float = setting(0.5, check=FRACTION, help="a share, 100% at most", group="sizes")
    kind: str = setting("a", check=one_of(("a", "b")), help="which kind")
    level: str = setting("LOW", check=one_of(("LOW", "HIGH")), parse=str.upper, help="level")
    path: Path = setting(Path("x.db"), help="a file")
    note: str | None = setting(None, help="a note", default_help="no note")
    urls: tuple[str, ...] = setting((), check=WS_URL, flag="--url", help="a relay (repeatable)")
    quiet: bool = setting(False, help="say less")
    loud: bool = setting(False, cli_default=True, flag="--no-loud", help="be quieter still")
    secret: str = setting("", repr=False, help="a token")
    internal: int = setting(0, cli=False)

    def __post_init__(self) -> None:
        validate(self)


def toy_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="toy")
    add_arguments(parser, Toy)
    return parser


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"count": 0}, "count = 0 is invalid: expected an integer >= 1"),
        ({"count": True}, "count = True is invalid: expected an integer"),
        ({"count": "3"}, "count = '3' is invalid: expected an integer"),
        ({"ratio": 2}, "ratio = 2 is invalid: expected a fraction in [0, 1]"),
        ({"kind": "c"}, "kind = 'c' is invalid: expected one of a, b"),
        ({"note": 3}, "note = 3 is invalid: expected a string, or nothing"),
        ({"urls": "ws://x"}, "urls = 'ws://x' is invalid: expected a list, each a string"),
        ({"urls": ("ws://x", "http://y")}, "urls = 'http://y' is invalid: expected a ws://"),
        ({"quiet": 1}, "quiet = 1 is invalid: expected true or false"),
        ({"secret": 42}, "secret = <hidden> is invalid: expected a string"),
    ],
)
def test_validate_names_the_field_the_value_and_what_it_accepts(options, message):
    with pytest.raises(SettingError) as error:
        Toy(**options)
    assert str(error.value).startswith(message)


def test_validate_accepts_an_int_for_a_float_a_str_for_a_path_and_none_when_optional():
    Toy(ratio=1, path="y.db", note=None, urls=["ws://a"])  # type: ignore[arg-type]


def test_from_mapping_spells_keys_with_dashes_and_refuses_unknown_ones():
    toy = from_mapping(Toy, {"count": 3, "ratio": 1, "path": "y.db", "urls": ["ws://a"]})
    assert (toy.count, toy.ratio, toy.path, toy.urls) == (3, 1.0, Path("y.db"), ("ws://a",))
    assert isinstance(toy.ratio, float)
    assert from_mapping(Toy, {}) == Toy()
    with pytest.raises(SettingError, match=r"^toml count = -1 is invalid: expected an integer"):
        from_mapping(Toy, {"count": -1}, source="toml")
    with pytest.raises(SettingError) as error:
        from_mapping(Toy, {"cuont": 1, "count": 1}, source="toml")
    assert str(error.value) == (
        "unknown toml keys ['cuont']; known keys: ['count', 'internal', 'kind', 'level', "
        "'loud', 'note', 'path', 'quiet', 'ratio', 'secret', 'urls']"
    )


def test_generated_options_have_the_fields_names_defaults_types_and_choices():
    parser = toy_parser()
    assert from_namespace(Toy, parser.parse_args([])) == Toy(loud=True)
    parsed = from_namespace(
        Toy,
        parser.parse_args(
            "--count 5 --ratio 0.25 --kind b --level high --path z.db --note hi "
            "--url ws://a --url wss://b --quiet --no-loud --secret s".split()
        ),
    )
    assert parsed == Toy(
        count=5,
        ratio=0.25,
        kind="b",
        level="HIGH",
        path=Path("z.db"),
        note="hi",
        urls=("ws://a", "wss://b"),
        quiet=True,
        loud=False,
        secret="s",
    )
    assert "--internal" not in parser.format_help()


def test_generated_help_shows_groups_help_and_every_default():
    text = " ".join(toy_parser().format_help().split())
    assert "sizes: --count COUNT how many (default: 2) --ratio RATIO a share, 100% at most" in text
    for shown in (
        "which kind (default: a)",
        "--kind {a,b}",
        "a file (default: x.db)",
        "a note (default: no note)",
        "a relay (repeatable) (default: none)",
        'a token (default: "")',
        "--quiet say less",
        "--no-loud be quieter still",
    ):
        assert shown in text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--count", "0"], "toy: error: --count = 0 is invalid: expected an integer >= 1"),
        (["--count", "x"], "toy: error: argument --count: invalid int value: 'x'"),
        (["--kind", "c"], "toy: error: argument --kind: invalid choice: 'c'"),
        (["--url", "http://x"], "toy: error: --url = 'http://x' is invalid: expected a ws://"),
    ],
)
def test_bad_options_are_one_line_with_status_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        settings.parse_args(toy_parser(), Toy, argv)
    [line] = capsys.readouterr().err.splitlines()
    assert exit_info.value.code == 2
    assert line.startswith(message)
    assert line.endswith("(see toy --help)")


# --------------------------------------------------------------------------- run config


def test_run_config_error_names_the_run_config_key():
    with pytest.raises(ConfigError) as error:
        RunConfig.from_run_config({"batch-size": 1})
    assert str(error.value) == (
        "run-config batch-size = 1 is invalid: expected an integer >= 2 (BatchNorm needs two "
        "examples)"
    )
    with pytest.raises(ConfigError, match=r"^run-config relay-token = <hidden> is invalid"):
        RunConfig.from_run_config({"relay-token": 123})
    with pytest.raises(SettingError, match=r"^batch_size = 1 is invalid"):
        RunConfig(batch_size=1)


def test_run_config_defaults_are_the_pyproject_defaults():
    # The two places a federated default is written down must agree.
    with open(ROOT / "pyproject.toml", "rb") as file:
        app_config = tomllib.load(file)["tool"]["flwr"]["app"]["config"]
    assert RunConfig.from_run_config(app_config) == RunConfig()
    assert set(app_config) == {f.name.replace("_", "-") for f in dataclasses.fields(RunConfig)}


# --------------------------------------------------------------------------- the centralized CLI


def train_centralized_parser() -> argparse.ArgumentParser:
    parser = build_parser()
    [commands] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return commands.choices["train-centralized"]


def test_train_centralized_options_are_the_config_fields():
    parser = train_centralized_parser()
    options = {a.dest: a.option_strings for a in parser._actions if a.dest != "help"}
    fields = {f.name for f in dataclasses.fields(CentralizedConfig)} - {"run_id"}
    assert set(options) == fields
    assert options["progress"] == ["--no-progress"]
    assert from_namespace(CentralizedConfig, parser.parse_args([])) == CentralizedConfig(
        progress=True
    )


def test_train_centralized_help_shows_every_option_with_its_default():
    text = " ".join(train_centralized_parser().format_help().split())
    for section in (
        "training:",
        "data and model:",
        "early stopping and best epoch:",
        "monitoring and output:",
    ):
        assert section in text
    defaults = CentralizedConfig()
    for field in dataclasses.fields(CentralizedConfig):
        if field.name in ("run_id", "progress"):
            continue
        option = "--" + field.name.replace("_", "-")
        after = text.split(f"{option} ", 2)[-1]  # the option's help, past the usage line
        assert "(default: " in after.split(" --", 1)[0], option
        value = getattr(defaults, field.name)
        if value is not None:
            assert f"(default: {value})" in after, option
    assert "val_recall" in text  # the metric's choices are listed although METRIC hides them


def test_the_option_table_in_the_docs_lists_every_option_with_its_default():
    rows = {}
    for line in (ROOT / "docs" / "centralized.md").read_text().splitlines():
        if line.startswith("| `--"):
            option, default = (cell.strip() for cell in line.split("|")[1:3])
            rows[option.strip("`")] = default
    parser = train_centralized_parser()
    actions = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert set(rows) == {a.option_strings[0] for a in actions}
    for action in actions:
        if action.default is not None and not isinstance(action.default, bool):
            assert rows[action.option_strings[0]] == str(action.default), action.option_strings


def test_centralized_config_names_python_fields():
    with pytest.raises(SettingError, match=r"^batch_size = 1 is invalid: expected an integer >= 2"):
        CentralizedConfig(batch_size=1)
    with pytest.raises(SettingError, match=r"^mode = 'up' is invalid: expected one of min, max"):
        CentralizedConfig(mode="up")
    assert "relay_token" not in repr(CentralizedConfig(relay_token="s3cret"))


# --------------------------------------------------------------------------- the relay CLI


def test_relay_defaults_follow_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    monkeypatch.delenv(RELAY_TOKEN_ENV, raising=False)
    assert parse_args([]) == RelayConfig()
    assert (parse_args([]).db, parse_args([]).token) == (Path("data/relay.db"), None)
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    monkeypatch.setenv(RELAY_TOKEN_ENV, "s3cret")
    config = parse_args([])
    assert (config.db, config.token) == (tmp_path / "relay.db", "s3cret")
    assert "s3cret" not in repr(config)


def test_relay_options_parse_into_the_config():
    config = parse_args(
        "--host 0.0.0.0 --port 0 --db r.db --token t --allowed-origin http://a:1 "
        "--allowed-origin https://b --max-message-bytes 10 --max-buffer-bytes 20 "
        "--log-level debug".split()
    )
    assert config == RelayConfig(
        host="0.0.0.0",
        port=0,
        db=Path("r.db"),
        token="t",
        allowed_origins=("http://a:1", "https://b"),
        max_message_bytes=10,
        max_buffer_bytes=20,
        log_level="DEBUG",
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--port", "70000"], "--port = 70000 is invalid: expected a port number 0-65535"),
        (["--port", "http"], "argument --port: invalid int value: 'http'"),
        (["--max-message-bytes", "0"], "--max-message-bytes = 0 is invalid: expected an integer"),
        (["--max-buffer-bytes", "-5"], "--max-buffer-bytes = -5 is invalid: expected an integer"),
        (["--allowed-origin", "http://a:1/"], "--allowed-origin = 'http://a:1/' is invalid"),
        (["--log-level", "loud"], "argument --log-level: invalid choice: 'LOUD'"),
    ],
)
def test_bad_relay_options_are_one_line_with_status_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    [line] = capsys.readouterr().err.splitlines()
    assert exit_info.value.code == 2
    assert line.startswith(f"fl-stream-relay: error: {message}")


def test_relay_help_shows_every_option_with_its_default():
    done = subprocess.run(
        [sys.executable, "-m", "relay", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if k not in (DATA_DIR_ENV, RELAY_TOKEN_ENV)},
    )
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())
    for option, default in [
        ("--host", "127.0.0.1"),
        ("--port", "8765"),
        ("--db", "data/relay.db"),
        ("--token", f"${RELAY_TOKEN_ENV}"),
        ("--allowed-origin", "none"),
        ("--max-message-bytes", "65536"),
        ("--max-buffer-bytes", "1048576"),
        ("--log-level", "INFO"),
    ]:
        after = text.split(f"{option} ", 2)[-1]
        assert f"(default: {default}" in after.split(" --", 1)[0], option


# --------------------------------------------------------------------------- import weight


def test_settings_and_relay_config_import_no_heavy_package():
    probe = (
        "import json, sys, fl_stream.settings, relay.config; "
        "print(json.dumps(sorted({'torch', 'flwr', 'numpy'} & set(sys.modules))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []
