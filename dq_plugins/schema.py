"""One place for the facts the whole package shares: splits, column names, artifact paths, metric
keys and the registry of issue types.

Pure declarations (standard library only), so every phase can import it without importing another.
Add a column to its group and to :data:`COMPUTED_IN`; add an issue type with :func:`register_issue_type`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

# ---------------------------------------------------------------------------------------- splits
TRAIN = "train"
VALIDATION = "validation"
SPLIT_ORDER: tuple[str, ...] = (TRAIN, VALIDATION)
"""Known splits, in the order tables show them; other splits follow sorted by name."""


def split_rank(split: str) -> int:
    """Position of ``split`` in :data:`SPLIT_ORDER`; any other split ranks after them (``len(SPLIT_ORDER)``)."""
    return SPLIT_ORDER.index(split) if split in SPLIT_ORDER else len(SPLIT_ORDER)


def ordered_splits(splits: Iterable[object]) -> list[str]:
    """The distinct ``splits`` (as text): :data:`SPLIT_ORDER` first, then the others sorted by name."""
    return sorted({str(split) for split in splits}, key=lambda split: (split_rank(split), split))


# ---------------------------------------------------------------------------------------- metric keys
def summary_metric_key(name: str, split: str) -> str:
    """The key of summary metric ``name`` (an issue count, a noise rate, ...) for ``split``: ``dq.<name>`` for
    train, ``dq.<name>.<split>`` otherwise (``dq.num_label_issues``, ``dq.num_label_issues.validation``)."""
    return f"dq.{name}" if split == TRAIN else f"dq.{name}.{split}"


def split_metric_key(name: str, split: str) -> str:
    """``dq.<name>.<split>`` for every split, train included (``dq.accuracy.train``, ``dq.mean_latency_ms.train``)."""
    return f"dq.{name}.{split}"


DEVICE_PEAK_METRIC = "dq.memory.device_peak_mb"
"""The most MB the recording held at once on the model's device (buffers, stage, fold workspace, embedding stage)."""
HOST_PEAK_METRIC = "dq.memory.host_peak_mb"
"""The most MB the recording held at once in host RAM during training (analysis excluded)."""


# ---------------------------------------------------------------------------------------- columns of dq/samples.parquet
DYNAMICS_COLUMNS: tuple[str, ...] = (
    "sample_id", "split", "label", "pred", "mislabel_score", "is_label_issue", "suggested_label",
    "confidence", "variability", "correctness", "aum", "forgetting_events", "el2n", "confidence_pred",
)
"""Columns from the training dynamics, always present and first, in this order. ``confidence_pred`` is the
softmax probability of the predicted class at the last epoch that saw the sample (for calibration)."""

EMBEDDING_COLUMNS: tuple[str, ...] = (
    "outlier_score", "is_outlier", "near_duplicate_of", "is_near_duplicate", "near_duplicate_score",
    "conflicting_duplicate", "conflicting_duplicate_score", "neighbor_disagreement", "cluster", "x2d", "y2d",
)
"""Columns from the embeddings (present when the run recorded embeddings), after the dynamics columns."""

LABEL_DEPENDENT_EMBEDDING_COLUMNS: tuple[str, ...] = (
    "conflicting_duplicate", "conflicting_duplicate_score", "neighbor_disagreement",
)
"""The embedding columns that compare given labels (one class per sample); the others need no label."""

LABEL_FREE_EMBEDDING_COLUMNS: tuple[str, ...] = tuple(
    c for c in EMBEDDING_COLUMNS if c not in LABEL_DEPENDENT_EMBEDDING_COLUMNS)
"""Embedding columns of a token task's ``dq/samples.parquet`` (one embedding per sequence)."""

MULTILABEL_EMBEDDING_COLUMNS: tuple[str, ...] = tuple(
    c for c in EMBEDDING_COLUMNS if c not in LABEL_DEPENDENT_EMBEDDING_COLUMNS or c == "neighbor_disagreement")
"""Embedding columns of a multi-label task's ``dq/samples.parquet``: the label-free ones and
``neighbor_disagreement`` over label sets (:func:`dq_plugins.scores.neighbors.neighbor_label_set_disagreement`)."""

COPY_COLUMNS: tuple[str, ...] = ("train_duplicate_of", "is_leaked", "leaked_score")
"""Columns from the input fingerprints (present when the run fingerprinted its inputs): the train row a
held-out row copies (-1 otherwise, and for every train row), whether it does, and how closely (1 for an
exact copy, the cosine of the centred input sketches for a near copy, 0 otherwise). Within a split the input copies fill
``near_duplicate_of`` / ``is_near_duplicate`` / ``conflicting_duplicate`` (added when embeddings are off)."""

LATENCY_COLUMN = "latency_ms"
"""Prediction latency of a sample in milliseconds (present when the forward passes were timed)."""

CLUSTER_COLUMN = "cluster"

COMPUTED_COLUMNS: frozenset[str] = frozenset((*DYNAMICS_COLUMNS, *EMBEDDING_COLUMNS, *COPY_COLUMNS, LATENCY_COLUMN))
"""Columns the package computes; every other column of ``dq/samples.parquet`` is metadata and gets slices."""

_SCORES = "dq_plugins.scores"
COMPUTED_IN: dict[str, str] = {
    "sample_id": "dq_plugins.recording.ledger",
    "split": "dq_plugins.recording.ledger",
    "label": "dq_plugins.recording.ledger",
    "pred": "dq_plugins.analysis.pipeline",
    "mislabel_score": f"{_SCORES}.mislabel",
    "is_label_issue": f"{_SCORES}.confident_learning (early window: dq_plugins.analysis.pipeline.early_flags)",
    "suggested_label": f"{_SCORES}.confident_learning",
    "confidence": f"{_SCORES}.cartography",
    "variability": f"{_SCORES}.cartography",
    "correctness": f"{_SCORES}.cartography",
    "aum": f"{_SCORES}.aum",
    "forgetting_events": f"{_SCORES}.forgetting",
    "el2n": f"{_SCORES}.el2n",
    "confidence_pred": "dq_plugins.analysis.pipeline",
    "outlier_score": f"{_SCORES}.outliers",
    "is_outlier": f"{_SCORES}.outliers",
    "near_duplicate_of": f"{_SCORES}.duplicates",
    "is_near_duplicate": f"{_SCORES}.duplicates",
    "near_duplicate_score": f"{_SCORES}.duplicates",
    "conflicting_duplicate": f"{_SCORES}.duplicates",
    "conflicting_duplicate_score": f"{_SCORES}.duplicates",
    "neighbor_disagreement": f"{_SCORES}.neighbors",
    "cluster": f"{_SCORES}.clusters",
    "x2d": f"{_SCORES}.projection",
    "y2d": f"{_SCORES}.projection",
    "latency_ms": "dq_plugins.recording.latency",
    "train_duplicate_of": f"{_SCORES}.copies",
    "is_leaked": f"{_SCORES}.copies",
    "leaked_score": f"{_SCORES}.copies",
}
"""Column of ``dq/samples.parquet`` -> the module that computes it."""

# ---------------------------------------------------------------------------------------- other tasks
MULTILABEL_SAMPLE_COLUMNS: tuple[str, ...] = (
    "sample_id", "split", "label", "suggested_label", "pred", "mislabel_score", "is_label_issue",
    "num_label_issues", "confidence",
)
"""Columns of ``dq/samples.parquet`` for a multi-label task (:mod:`dq_plugins.analysis.multilabel`):
``label``, ``suggested_label`` and ``pred`` are lists of class ids; ``confidence`` is the mean over classes
and epochs of the sigmoid probability of the given value; ``num_label_issues`` counts flagged classes."""

SAMPLE_LABEL_COLUMNS: tuple[str, ...] = (
    "sample_id", "split", "class_id", "given", "prob", "class_score", "is_label_issue", "action",
)
"""Columns of ``dq/sample_labels.parquet``: one row per (split, sample_id, class); ``given`` is 0/1,
``prob`` the class probability the flags come from, ``action`` one of "add", "remove", "keep"."""

TOKEN_COLUMNS: tuple[str, ...] = (
    "sample_id", "split", "token_index", "label", "pred", "mislabel_score", "is_label_issue", "suggested_label",
)
"""Columns of ``dq/tokens.parquet`` (:mod:`dq_plugins.analysis.tokens`): one row per labelled token;
``token_index`` is the position in the model's input sequence, ``pred`` the latest predicted tag."""

TOKEN_SAMPLE_COLUMNS: tuple[str, ...] = (
    "sample_id", "split", "mislabel_score", "is_label_issue", "num_tokens", "num_label_issues", "token_accuracy",
)
"""Columns of ``dq/samples.parquet`` for a token task: one row per sequence; ``mislabel_score`` is its most
suspicious token's, ``is_label_issue`` whether any of its tokens is flagged."""

# ---------------------------------------------------------------------------------------- slice tables
SLICE_TABLE_COLUMNS: tuple[str, ...] = (
    "split", "slice", "column", "value", "size", "accuracy", "macro_f1", "mean_mislabel_score",
    "label_issue_rate", "ece", "mean_latency_ms",
)
"""Columns of the slice table (``dq/slices.json``)."""

SLICE_TABLE_METRICS: tuple[str, ...] = SLICE_TABLE_COLUMNS[4:]
"""The numeric columns of a slice table: what a rule ``over="slices"`` can test."""

# ---------------------------------------------------------------------------------------- artifact paths
ARTIFACT_DIR = "dq"
SAMPLES_PATH = f"{ARTIFACT_DIR}/samples.parquet"
ISSUES_PATH = f"{ARTIFACT_DIR}/issues.json"
DATA_MAP_PATH = f"{ARTIFACT_DIR}/data_map.png"
RAW_DIR = f"{ARTIFACT_DIR}/raw"
EMBEDDINGS_DIR = f"{ARTIFACT_DIR}/embeddings"
FINGERPRINTS_DIR = f"{ARTIFACT_DIR}/fingerprints"
LEAKAGE_PATH = f"{ARTIFACT_DIR}/leakage.json"
"""Held-out rows that copy a train row (a table the MLflow UI renders)."""
ANALYSIS_ERROR_PATH = f"{RAW_DIR}/analysis_error.txt"
PROJECTION_TAG = "dq.projection"
"""Run tag: the 2D map's method the end-of-fit analysis used (``dq analyze`` reuses it)."""
EMBEDDING_MAP_PATH = f"{ARTIFACT_DIR}/embedding_map.png"
EMBEDDING_HTML_PATH = f"{ARTIFACT_DIR}/embedding_map.html"
CLASS_OVERLAP_PATH = f"{ARTIFACT_DIR}/class_overlap.json"
SLICES_PATH = f"{ARTIFACT_DIR}/slices.json"
WEAK_SLICES_PATH = f"{ARTIFACT_DIR}/weak_slices.json"
WEAK_SLICES_FIGURE_PATH = f"{ARTIFACT_DIR}/weak_slices.png"
LATENCY_PATH = f"{ARTIFACT_DIR}/latency.json"
RULES_DIR = f"{ARTIFACT_DIR}/rules"
RULES_TABLE_PATH = f"{ARTIFACT_DIR}/rules.json"
SAMPLE_LABELS_PATH = f"{ARTIFACT_DIR}/sample_labels.parquet"
"""Multi-label runs: one row per (split, sample_id, class)."""
TOKENS_PATH = f"{ARTIFACT_DIR}/tokens.parquet"
"""Token classification runs: one row per labelled token."""
TOKEN_VIEW_PATH = f"{ARTIFACT_DIR}/token_issues.html"
"""Token classification runs: the most suspicious sequences, flagged tokens highlighted."""
PROVENANCE_PATH = f"{ARTIFACT_DIR}/fix_provenance.json"
"""Artifact of the source run listing every fix applied from it."""


def raw_path(split: str) -> str:
    """Artifact path of a split's raw record (``dq/raw/<split>.npz``)."""
    return f"{RAW_DIR}/{split}.npz"


def embeddings_path(split: str) -> str:
    """Artifact path of a split's embeddings (``dq/embeddings/<split>.npz``)."""
    return f"{EMBEDDINGS_DIR}/{split}.npz"


def fingerprints_path(split: str) -> str:
    """Artifact path of a split's input fingerprints (``dq/fingerprints/<split>.npz``)."""
    return f"{FINGERPRINTS_DIR}/{split}.npz"


# ---------------------------------------------------------------------------------------- issue types
class ScoreDirection(Enum):
    """How to read an issue type's score."""

    HIGHER_IS_WORSE = "higher_is_worse"
    LOWER_IS_WORSE = "lower_is_worse"


@dataclass(frozen=True)
class IssueType:
    """One kind of issue a row of ``dq/samples.parquet`` can have.

    Attributes:
        name: what ``dq export --issue`` takes.
        flag_column: boolean column, True on the rows that have the issue.
        score_column: numeric column that ranks the rows (see ``score_direction``).
        score_direction: whether a higher score means a worse row.
        description: one line for people.
        computed_in: the module that sets the flag.
        needs_embeddings: the columns exist only in runs that recorded embeddings.
    """

    name: str
    flag_column: str
    score_column: str
    score_direction: ScoreDirection
    description: str
    computed_in: str
    needs_embeddings: bool = False


_ISSUE_TYPES: dict[str, IssueType] = {}


def register_issue_type(issue_type: IssueType, *, replace: bool = False) -> IssueType:
    """Add ``issue_type`` to the registry (for columns a feature adds to ``dq/samples.parquet``).

    Raises:
        ValueError: the name is taken (pass ``replace=True`` to redefine it).
    """
    if issue_type.name in _ISSUE_TYPES and not replace:
        raise ValueError(
            f"Issue type {issue_type.name!r} is already registered ({_ISSUE_TYPES[issue_type.name]}). "
            "HINT: choose another name, or pass `replace=True` to redefine it."
        )
    _ISSUE_TYPES[issue_type.name] = issue_type
    return issue_type


def issue_types() -> tuple[IssueType, ...]:
    """Every registered issue type, in registration order."""
    return tuple(_ISSUE_TYPES.values())


def issue_type(name: str) -> IssueType:
    """The registered issue type called ``name``.

    Raises:
        ValueError: no such type (the message lists the registered names).
    """
    if name not in _ISSUE_TYPES:
        raise ValueError(f"Unknown issue type {name!r}. HINT: use one of {sorted(_ISSUE_TYPES)}.")
    return _ISSUE_TYPES[name]


register_issue_type(IssueType(
    "label", "is_label_issue", "mislabel_score", ScoreDirection.HIGHER_IS_WORSE,
    "the given label is probably wrong (confident learning, ranked by the training dynamics)",
    f"{_SCORES}.confident_learning",
))
register_issue_type(IssueType(
    "outlier", "is_outlier", "outlier_score", ScoreDirection.HIGHER_IS_WORSE,
    "far from its nearest neighbours in embedding space",
    f"{_SCORES}.outliers", needs_embeddings=True,
))
register_issue_type(IssueType(
    "near_duplicate", "is_near_duplicate", "near_duplicate_score", ScoreDirection.HIGHER_IS_WORSE,
    "another sample (near_duplicate_of) has almost the same embedding",
    f"{_SCORES}.duplicates", needs_embeddings=True,
))
register_issue_type(IssueType(
    "duplicate", "conflicting_duplicate", "conflicting_duplicate_score", ScoreDirection.HIGHER_IS_WORSE,
    "in a near-duplicate pair whose labels differ",
    f"{_SCORES}.duplicates", needs_embeddings=True,
))
register_issue_type(IssueType(
    "leaked", "is_leaked", "leaked_score", ScoreDirection.HIGHER_IS_WORSE,
    "a held-out row whose input copies a train row (train_duplicate_of names it)",
    f"{_SCORES}.copies",
))
