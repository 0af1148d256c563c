"""Throwaway PostgreSQL databases for the migration tooling and its contract test."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg2
from psycopg2 import sql

#: Scratch databases are named ``<prefix><random hex>``; leftovers are easy to spot.
DEFAULT_PREFIX = "sf_mig_"


def _admin(admin_url: str) -> Any:
    conn = psycopg2.connect(admin_url, connect_timeout=5)
    conn.autocommit = True  # CREATE/DROP DATABASE cannot run in a transaction
    return conn


def url_for(admin_url: str, name: str) -> str:
    """``admin_url`` with its database name replaced by ``name``."""
    parts = urlsplit(admin_url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


def create(admin_url: str, prefix: str = DEFAULT_PREFIX) -> str:
    """Create an empty database with a random name; return its name."""
    name = prefix + secrets.token_hex(6)
    conn = _admin(admin_url)
    try:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    finally:
        conn.close()
    return name


def drop(admin_url: str, name: str) -> None:
    """Drop database ``name``, disconnecting whoever is still connected (PostgreSQL 13+)."""
    conn = _admin(admin_url)
    try:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    finally:
        conn.close()


@contextmanager
def database(admin_url: str, prefix: str = DEFAULT_PREFIX) -> Iterator[str]:
    """A scratch database's URL for the duration of the block; dropped afterwards."""
    name = create(admin_url, prefix)
    try:
        yield url_for(admin_url, name)
    finally:
        drop(admin_url, name)
