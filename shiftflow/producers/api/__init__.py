"""The management API under ``/api/v1``: app, handlers, OpenAPI document, auth throttling.
"""
