"""Text that users control (slice names, class names, titles) made safe for matplotlib."""

from __future__ import annotations


def plain(text: object) -> str:
    """``text`` as a string that matplotlib draws literally.

    matplotlib parses a pair of ``$`` as mathtext: a metadata value such as ``$\\frac{$`` raises inside
    ``savefig``. Every ``$`` is escaped (``\\$``), which matplotlib draws as a dollar sign.
    """
    return str(text).replace("$", r"\$")
