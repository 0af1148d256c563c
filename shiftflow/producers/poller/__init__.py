"""The poller: polling triggers that call an HTTP source and trigger once per new item.
"""
