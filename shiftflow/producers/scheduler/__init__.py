"""The scheduler process: schedule rows, which slots fire, the firing loop, one replica wired.
"""
