"""Relational state (Peewee models), query/command functions, migrations and the Mongo writer."""
