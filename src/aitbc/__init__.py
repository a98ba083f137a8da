"""AITBC: a marketplace for AI compute.

Clients submit AI jobs and pay in AIT; miners run real models; the coordinator
(:func:`aitbc.api.create_app`) matches them and records every step.
"""

__version__ = "0.1.0"
