"""Override text as the user typed it, made fit for Hydra's grammar."""

from __future__ import annotations

# characters Hydra's override grammar gives a meaning to in a value: such values need the user's quoting
GRAMMAR_CHARS = set("'\"\\,=[](){}$")


def quote_unicode_values(args: list[str]) -> list[str]:
    """`prompt=héllo wörld` -> `prompt='héllo wörld'`: Hydra's grammar takes only ASCII in an unquoted value,
    so a value with non-ASCII text and none of the grammar's own characters is quoted for the user (what
    they meant; anything else is left for Hydra and its one-line message)."""
    out = []
    for arg in args:
        key, eq, value = arg.partition("=")
        if (eq and not arg.startswith("-") and value and not value.isascii() and key.isascii()
                and not GRAMMAR_CHARS & set(value)):
            arg = f"{key}='{value}'"
        out.append(arg)
    return out
