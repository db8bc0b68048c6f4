"""User-facing errors: the CLI turns these into a one-line message on stderr and a non-zero exit."""


class CometError(Exception):
    """Bad input or an unusable resource; the message says what to do."""


class ConfigError(CometError):
    """An invalid config value, caught before any work starts."""


def require(condition: bool, message: str) -> None:
    """Raise ConfigError(message) unless condition holds."""
    if not condition:
        raise ConfigError(message)


class RangeError(CometError):
    """A secret value left the fixed-point range of a protocol (caught by the simulation's range check)."""
