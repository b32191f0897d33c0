"""Old option names that keep working for a while: one warning, naming the new name, for all of them."""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Mapping
from typing import Any


def warn_renamed(old: str, new: str, where: str, stacklevel: int = 3) -> None:
    """Emit the ``FutureWarning`` that ``old`` (an argument or a flag of ``where``) is now called ``new``.

    ``FutureWarning``, not ``DeprecationWarning``: Python shows it to the users of a library by default.
    """
    warnings.warn(
        f"{where}: `{old}` is deprecated and will be removed in a future release; use `{new}` (same meaning).",
        FutureWarning,
        stacklevel=stacklevel,
    )


def renamed_options(function: Callable[..., Any], legacy: dict[str, Any], renames: Mapping[str, str],
                    values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` (new name -> value given to ``function``) with the values given under old names moved in.

    ``function`` (an ``__init__``) catches the old names of ``renames`` (old -> new) in ``**legacy``;
    each one used warns once (:func:`warn_renamed`), pointing at the caller of ``function``.

    Raises:
        TypeError: a keyword in ``legacy`` that is no old name (as Python would say), or an option given
            under both names.
    """
    owner = function.__qualname__.removesuffix(".__init__")
    unknown = [name for name in legacy if name not in renames]
    if unknown:
        raise TypeError(f"{owner}() got an unexpected keyword argument {unknown[0]!r}")
    defaults = {name: p.default for name, p in inspect.signature(function).parameters.items()}
    out = dict(values)
    for old, given in legacy.items():
        new = renames[old]
        if out[new] is not defaults[new] and out[new] != defaults[new]:
            raise TypeError(f"{owner}() got both `{old}=` and its new name `{new}=`. HINT: pass only `{new}=`.")
        warn_renamed(f"{old}=", f"{new}=", f"{owner}()", stacklevel=4)
        out[new] = given
    return out
