"""The run's configuration below the CLI: the conf/ tree, its typed schema and its checks.

It lives in the core (not in cli/) so that experiments/ and the core can read and check a config
without importing the command line; cli/ composes and launches on top of it.
"""
