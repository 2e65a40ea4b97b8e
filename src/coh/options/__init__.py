"""One way to configure every stage: a config dataclass whose fields carry their help text.

A stage declares its options as a dataclass whose fields are made with :func:`option` (a
default, a help line, and optionally short or old spellings, choices, a positional slot). From it:

- :func:`add_options` builds the stage's flags, one ``--field-name`` per field, with the help and
  the default shown in ``--help``, plus ``--config FILE`` (a YAML recipe whose keys are the field
  names) and ``--print-config`` (print the resolved options as YAML and exit);
- :func:`options_from_args` resolves them: the dataclass defaults, under the recipe, under the
  flags given on the command line; then the dataclass checks itself (``__post_init__``, usually
  through :func:`check_fields` plus the stage's own rules);
- :func:`read_recipe` reads a recipe alone (``coh train --config``, ``coh compare RECIPE``).

Values are checked for their declared type wherever they come from; recipe errors name the file,
the line where YAML itself failed, and the key. Old spellings stay accepted for a release and print
a deprecation note naming the new one.

Files: :mod:`coh.options.flags` (fields and the flags built from them, resolving a config),
:mod:`coh.options.values` (recipes, ``KEY=VALUE`` arguments, coercion to declared types),
:mod:`coh.options.checks` (checks of a built config).
"""

from coh.options.checks import OptionError, check_fields, check_range
from coh.options.flags import MISSING, HelpFormatter, add_options, option, options_from_args
from coh.options.values import (
    coerce,
    coerce_options,
    key_value_note,
    key_value_options,
    parse_yaml,
    read_recipe,
    to_yaml,
)

__all__ = ["MISSING", "HelpFormatter", "OptionError", "add_options", "check_fields", "check_range", "coerce",
           "coerce_options", "key_value_note", "key_value_options", "option", "options_from_args", "parse_yaml",
           "read_recipe", "to_yaml"]
