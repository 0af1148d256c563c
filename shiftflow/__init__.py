"""ShiftFlow: queue-centric workflow workers on RabbitMQ, PostgreSQL and Dramatiq."""

__version__ = "0.1.0"
