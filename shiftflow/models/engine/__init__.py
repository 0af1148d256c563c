"""The engine: start executions, claim, run and record steps, waits, fan-out, flow control,
the call-once ledger and the Mongo log writer. Imports tables, never manage or swaps.
"""
