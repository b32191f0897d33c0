"""Give a dataset the stable integer sample ids that the callbacks need."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch.utils.data import Dataset


class IndexedDataset(Dataset):
    """A map-style dataset whose items are dicts carrying their index under ``id_key``.

    Dict items get ``id_key`` added; tuple/list items ``(inputs, label, *extra)`` become
    ``{input_key: inputs, label_key: label, "extra_0": ..., id_key: index}``.
    """

    def __init__(self, dataset: Any, id_key: str = "idx", input_key: str = "inputs", label_key: str = "labels",
                 offset: int = 0) -> None:
        if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
            raise TypeError(
                f"with_ids needs a map-style dataset (with __getitem__ and __len__), got {type(dataset).__name__}. "
                "HINT: for an IterableDataset, yield the ids yourself and pass `num_samples=` to the callback."
            )
        self.dataset = dataset
        self.id_key, self.input_key, self.label_key = id_key, input_key, label_key
        self.offset = _check_offset(offset)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.dataset[index]
        if isinstance(item, Mapping):
            if self.id_key in item:
                raise ValueError(
                    f"Item {index} already has a key {self.id_key!r}. HINT: pass `id_key=` another name to with_ids "
                    "and to the callback, or use the existing ids directly."
                )
            return {**item, self.id_key: self.offset + index}
        if isinstance(item, Sequence) and not isinstance(item, str) and len(item) >= 2:
            out = {self.input_key: item[0], self.label_key: item[1], self.id_key: self.offset + index}
            out.update({f"extra_{i}": value for i, value in enumerate(item[2:])})
            return out
        raise TypeError(
            f"with_ids expects dataset items that are dicts or (inputs, label, ...) tuples, but item {index} is a "
            f"{type(item).__name__}."
        )


def _check_offset(offset: int) -> int:
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ValueError(f"Expected `offset` to be a non-negative integer but got {offset!r}.")
    return offset


def with_ids(
    dataset: Any, id_key: str = "idx", input_key: str = "inputs", label_key: str = "labels", offset: int = 0
) -> Any:
    """Return ``dataset`` with a sample id ``offset + position`` in every item.

    A Hugging Face ``datasets.Dataset`` gets an ``id_key`` column (a new Dataset); any other
    map-style dataset is wrapped in :class:`IndexedDataset`. ``offset`` gives a part of a concatenated
    dataset its own id range: ``ConcatDataset([with_ids(a), with_ids(b, offset=len(a))])`` (ids must stay
    below the callback's ``num_samples``, which defaults to the length of the dataset it trains on).
    """
    offset = _check_offset(offset)
    if type(dataset).__module__.startswith("datasets.") and hasattr(dataset, "add_column"):
        if id_key in dataset.column_names:
            raise ValueError(f"The dataset already has a column {id_key!r}.")
        return dataset.add_column(id_key, list(range(offset, offset + len(dataset))))
    return IndexedDataset(dataset, id_key=id_key, input_key=input_key, label_key=label_key, offset=offset)
