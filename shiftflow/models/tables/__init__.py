"""Peewee tables and their storage plumbing (base, registry, migrations, sealed columns).

Tables import no behaviour: nothing from ``engine``, ``manage`` or ``swaps`` (import-linter).
"""
