"""``aitbc miner``: the daemon a GPU or CPU provider runs.

It registers with a coordinator, heartbeats, long-polls for jobs, runs them on a
real model through a backend (``aitbc.miner.backends``), reports progress, and
completes them with the metered usage and its signature over the result. It talks
to the coordinator over HTTP only.
"""
