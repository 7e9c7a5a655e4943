"""The PostgreSQL fixture itself: a broken server shows up here as its own failure, not inside Optuna/MLflow tests."""

from urllib.parse import urlsplit

import pytest


def _connect(url: str):
    import psycopg2

    parts = urlsplit(url)
    assert parts.scheme == "postgresql+psycopg2"
    return psycopg2.connect(
        host=parts.hostname, port=parts.port, user=parts.username, dbname=parts.path.lstrip("/"), connect_timeout=10
    )


def test_roundtrip_on_loopback(postgres_url):
    url = postgres_url("fixture_roundtrip")
    parts = urlsplit(url)
    assert (parts.hostname, parts.username, parts.path) == ("127.0.0.1", "postgres", "/fixture_roundtrip")
    conn = _connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE t (id integer PRIMARY KEY, name text NOT NULL)")
            cur.execute("INSERT INTO t VALUES (%s, %s)", (1, "cbam"))
            conn.commit()
            cur.execute("SELECT id, name FROM t")
            assert cur.fetchall() == [(1, "cbam")]
            # The server we reached listens on the URL's host and port: loopback only.
            cur.execute("SELECT inet_server_addr()::text, inet_server_port(), current_setting('listen_addresses')")
            addr, port, listen = cur.fetchone()
        assert addr.split("/")[0] == "127.0.0.1"
        assert port == parts.port
        assert listen == "127.0.0.1"
    finally:
        conn.close()


def test_databases_are_separate(postgres_url):
    first, second = postgres_url("fixture_first"), postgres_url("fixture_second")
    assert first != second
    conn = _connect(first)
    try:
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE only_here (x integer)")
        conn.commit()
    finally:
        conn.close()
    conn = _connect(second)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT to_regclass('only_here') IS NULL")
            assert cur.fetchone() == (True,)
    finally:
        conn.close()
    with pytest.raises(ValueError, match="already created"):
        postgres_url("fixture_first")
