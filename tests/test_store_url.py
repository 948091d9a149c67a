"""The storage URL: one setting chooses the backend and carries its options."""

from __future__ import annotations

from pathlib import Path

import pytest

from stride.store import ChdbConfig, ClickHouseConfig, parse_store_url, redact


def test_store_urls_parse_into_their_settings() -> None:
    assert parse_store_url("chdb:///var/lib/stride") == ChdbConfig(path=Path("/var/lib/stride"))
    config = parse_store_url(
        "https://ingest:p%40ss@ch.example:9443/metrics?cluster=main&connect_timeout=3"
        "&send_receive_timeout=60&compress=zstd&verify=false&ca_cert=/etc/ca.pem"
    )
    assert config == ClickHouseConfig(
        host="ch.example",
        port=9443,
        secure=True,
        user="ingest",
        password="p@ss",
        database="metrics",
        cluster="main",
        connect_timeout_s=3.0,
        send_receive_timeout_s=60.0,
        compress="zstd",
        verify=False,
        ca_cert="/etc/ca.pem",
    )
    plain = parse_store_url("http://ch")
    assert isinstance(plain, ClickHouseConfig)
    assert (plain.port, plain.user, plain.database, plain.compress) == (
        8123,
        "default",
        "stride",
        "lz4",
    )
    assert parse_store_url("https://ch").port == 8443  # type: ignore[union-attr]


def test_embedded_engine_settings_are_bounded_and_overridable(tmp_path: Path) -> None:
    config = parse_store_url(f"chdb://{tmp_path}?mark_cache_size=1000000")
    assert isinstance(config, ChdbConfig)
    assert config.engine["mark_cache_size"] == "1000000"
    assert config.engine["primary_index_cache_size"] == str(64 << 20)  # the default bound
    with pytest.raises(ValueError, match="engine option"):
        parse_store_url(f"chdb://{tmp_path}?mark_cache_size=1;DROP")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://h/db", "expected chdb:///path/to/dir or http"),
        ("chdb://relative/dir", "chdb:///absolute/path"),
        ("chdb:///data/a%3Fb", "may not contain"),
        ("http://h/db?colour=red", r"unknown option\(s\) \['colour'\]"),
        ("http://h/my-db", "letters, digits and _"),
        ("http://h/db?cluster=a;DROP", "cluster"),
        ("http://h/db?compress=snappy", "compress='snappy'"),
        ("http://h/db?connect_timeout=-1", "connect_timeout='-1' must be a positive number"),
        ("http://h:port/db", "the port is not a number"),
        ("http:///db", "no host"),
    ],
)
def test_a_bad_store_url_says_what_is_wrong(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_store_url(url)


def test_passwords_never_appear_in_messages() -> None:
    assert redact("https://u:topsecret@h:8443/db") == "https://u:***@h:8443/db"
    with pytest.raises(ValueError) as info:
        parse_store_url("https://u:topsecret@h/db?bad=1")
    assert "topsecret" not in str(info.value)
    assert "topsecret" not in repr(parse_store_url("https://u:topsecret@h/db"))
    # Unencoded, a / ends the host part for a URL parser: redaction must not rely on one.
    with pytest.raises(ValueError, match="percent-encode") as info:
        parse_store_url("http://u:top/secret@h:8123/db")
    assert "secret" not in str(info.value)
    assert redact("nats://token@h:4222") == "nats://***@h:4222"
