"""Errors that name what the user set.

Functions validate their own arguments and raise `ArgumentError` with the *parameter* name; the
glue that called them with a config section (`experiment.py`) turns it into a `ConfigError` naming
the *config field* (`model.aux_in_index`, `loss.contrastive.temperature`, ...). So each check
lives once, next to the code that needs it.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A config value that cannot work; the message names the field and what to do."""


class ArgumentError(ValueError):
    """An argument value that cannot work.

    argument: the parameter's name (e.g. "aux_in_index"); value: what was passed;
    what_to_do: a sentence saying what would work.
    """

    def __init__(self, argument: str, value, what_to_do: str):
        self.argument = argument
        self.value = value
        self.what_to_do = what_to_do
        super().__init__(f"{argument}={value!r}: {what_to_do}")

    def for_field(self, section: str) -> ConfigError:
        """The same problem, named as the config field `section.argument`."""
        return ConfigError(
            f"config field `{section}.{self.argument}` = {self.value!r}: {self.what_to_do}"
        )
