"""The webhook ingress: ``POST /hooks/{token}`` -> verified, deduplicated trigger on RabbitMQ.
"""
