"""Configuration: the embedded default, the example file, and clear errors."""

from __future__ import annotations

import tomllib
from pathlib import Path

import msgspec
import pytest

from gateway.config import Config, ConfigError, TLSMode, load_config

EXAMPLE = Path(__file__).resolve().parent.parent / "ops" / "gateway.example.toml"


def test_the_example_file_is_exactly_the_embedded_default() -> None:
    """ops/gateway.example.toml documents every key with its default: if a key is added or
    a default changes, this breaks until the example says so too."""
    assert load_config(EXAMPLE) == Config()
    raw = tomllib.loads(EXAMPLE.read_text())
    assert raw == msgspec.json.decode(msgspec.json.encode(Config()))  # every key present


def test_defaults_are_the_embedded_ones() -> None:
    config = load_config(None)
    assert config.data_dir == "var"
    assert config.mail_domain == "localhost"
    assert [(x.name, x.port, x.tls) for x in config.listeners] == [
        ("smtp", 2525, TLSMode.STARTTLS),
        ("smtps", 2465, TLSMode.IMPLICIT),
        ("submission", 2587, TLSMode.STARTTLS),
        ("pop3", 1110, TLSMode.STARTTLS),
        ("pop3s", 1995, TLSMode.IMPLICIT),
        ("admin", 8450, TLSMode.IMPLICIT),
    ]
    assert all(x.address == "127.0.0.1" for x in config.listeners)
    assert load_config(None, data_dir=Path("/srv/x")).data_dir == "/srv/x"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("mail_domian = 'x'", "unknown field `mail_domian`"),
        ("[smtp]\nmax_recipient = 5", "unknown field `max_recipient` - at `$.smtp`"),
        (
            "[smtp]\nmax_recipients = 'many'",
            "Expected `int`, got `str` - at `$.smtp.max_recipients`",
        ),
        ("[smtp]\nmax_recipients = 10", "at least 100"),
        ("[smtp]\nbare_newline = 'allow'", "at `$.smtp.bare_newline`"),
        ("[[listeners]]\nname='a'\nprotocol='smtp'\nport=70000", "70000 is not a TCP port"),
        ("[[listeners]]\nname='a'\nprotocol='imap'\nport=1", "at `$.listeners[0].protocol`"),
        ("[[listeners]]\nname='a'\nprotocol='smtp'\nport=1\ntls='sometimes'", "listeners[0].tls"),
        (
            "[[listeners]]\nname='a'\nprotocol='smtp'\nport=1\n"
            "[[listeners]]\nname='a'\nprotocol='smtp'\nport=2",
            "names must be unique",
        ),
        ("[tls]\ncertificate = '/x.pem'", "go together"),
        ("data_dir = ", "not valid TOML"),
    ],
)
def test_bad_files_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert message in str(info.value)
    assert str(path) in str(info.value)


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="No such file"):
        load_config(tmp_path / "nope.toml")
