"""Relational state and what is done with it, by role (imports point down this list's order):

* ``tables``: the Peewee tables, their registry and migrations (no behaviour);
* ``engine``: running executions (start, claim, run and record steps, waits, fan-out,
  flow control, the call-once ledger, the Mongo log writer);
* ``manage``: what a principal may do through the management API and the CLI;
* ``swaps``: the SideShift product (swap steps, orders, prices).

``manage`` and ``swaps`` never import each other.
"""
