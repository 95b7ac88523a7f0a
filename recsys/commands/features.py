"""``recsys features build|list`` and ``recsys similar``: the feature store."""

from __future__ import annotations

from pathlib import Path

import click

from recsys.config import Settings


def _console():
    from recsys.progress import console

    return console()


@click.group("features")
def features_group() -> None:
    """Product text vectors (the feature store)."""


@features_group.command("build")
@click.option(
    "--word-vectors",
    "word_vectors",
    default="train",
    show_default=True,
    help="train (Word2Vec on the catalogue), glove-6b-50d (optional extra), or PATH to "
    "word2vec binary/text vectors or NAME.npy (+ NAME.vocab, one word per line).",
)
@click.option(
    "--trust-pickle",
    is_flag=True,
    help="Allow a gensim .kv file (a Python pickle: loading it runs any code it holds).",
)
@click.option("--dim", default=100, show_default=True, help="Vector size when training.")
@click.option(
    "--weighting",
    type=click.Choice(["mean", "tfidf"]),
    default="mean",
    show_default=True,
    help="Average word vectors, or weigh them by TF-IDF.",
)
@click.option("--seed", default=1, show_default=True, help="Word2Vec seed.")
@click.option(
    "--workers",
    default=1,
    show_default=True,
    help="Word2Vec threads: 1 is exactly reproducible; 0 uses all cores (faster, "
    "vectors vary slightly between runs, so rebuilds recompute everything).",
)
@click.option("--epochs", default=5, show_default=True, help="Word2Vec epochs.")
@click.option("--min-count", default=2, show_default=True, help="Word2Vec minimum word count.")
@click.option(
    "--limit",
    type=int,
    default=None,
    help="Load only the first N words of a word2vec file (memory cap).",
)
@click.option("--with-title", is_flag=True, help="Prepend title and brand to the product text.")
@click.option("--name", default=None, help="Name of the new feature set.")
@click.option("--no-index", is_flag=True, help="Skip the HNSW index (similar then scans).")
@click.option(
    "--keep",
    default=3,
    show_default=True,
    help="Feature sets to keep (older, unreferenced ones are deleted); 0 keeps all.",
)
@click.pass_context
def build(
    ctx: click.Context,
    word_vectors: str,
    dim: int,
    weighting: str,
    seed: int,
    workers: int,
    epochs: int,
    min_count: int,
    limit: int | None,
    with_title: bool,
    name: str | None,
    no_index: bool,
    keep: int,
    trust_pickle: bool,
) -> None:
    """Clean product text, embed it and store a new current feature set."""
    from recsys.commands.database import open_engine
    from recsys.features import vectors as wv
    from recsys.features.store import build_features

    if word_vectors not in (wv.TRAIN, wv.GLOVE):  # a bad or untrusted file fails first
        wv.check_vectors_file(Path(word_vectors), trust_pickle=trust_pickle)
    settings: Settings = ctx.find_root().obj
    engine = open_engine(settings)
    from recsys.progress import progress_for_terminal

    progress = progress_for_terminal()
    try:
        with wv.trusting_pickle(trust_pickle):
            summary = build_features(
                engine,
                settings,
                word_vectors=word_vectors,
                dim=dim,
                weighting=weighting,
                seed=seed,
                workers=workers,
                epochs=epochs,
                min_count=min_count,
                limit=limit,
                with_title=with_title,
                name=name,
                create_hnsw=not no_index,
                keep=keep,
                progress=progress,
            )
    finally:
        progress.finish()
    from rich.table import Table

    table = Table(title=f"feature set {summary.name} (id {summary.feature_set_id}, current)")
    table.add_column("", style="bold")
    table.add_column("value", justify="right")
    rate = summary.n_products / summary.seconds if summary.seconds else 0.0
    table.add_row(
        "word vectors", f"{summary.source} ({summary.vocabulary_size:,} words, {summary.dim}-d)"
    )
    table.add_row("weighting", summary.weighting)
    table.add_row("products", f"{summary.n_products:,}")
    table.add_row("embedded", f"{summary.n_embedded:,}")
    table.add_row("computed / reused", f"{summary.n_computed:,} / {summary.n_reused:,}")
    for reason, count in sorted(summary.skipped.items()):
        table.add_row(f"skipped: {reason}", f"{count:,}")
    if summary.n_capped:
        table.add_row("text capped", f"{summary.n_capped:,}")
    table.add_row(
        "vocabulary coverage",
        f"{summary.token_coverage:.1%} of tokens, {summary.word_coverage:.1%} of distinct words",
    )
    table.add_row("HNSW index", "yes" if summary.indexed else "no")
    table.add_row("time", f"{summary.seconds:.1f} s ({rate:,.0f} products/s)")
    _console().print(table)


@features_group.command("convert-vectors")
@click.argument("source", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("target", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--trust-pickle",
    is_flag=True,
    help="Allow a gensim .kv SOURCE (a Python pickle: loading it runs any code it holds).",
)
@click.option("--limit", type=int, default=None, help="Keep only the first N words.")
def convert_vectors(source: Path, target: Path, trust_pickle: bool, limit: int | None) -> None:
    """Write word vectors SOURCE as TARGET (.npy, memory-mapped later) + its .vocab file.

    Converting a trusted gensim .kv file once means later builds (and `recsys run`) never
    unpickle anything.
    """
    from recsys.errors import InputError
    from recsys.features.vectors import load_vectors_file, save_npy_vectors

    if target.suffix != ".npy":
        raise InputError(f"{target}: the target must end in .npy (its words go to .vocab)")
    vectors = load_vectors_file(source, limit=limit, trust_pickle=trust_pickle)
    vocab = save_npy_vectors(vectors.keyed_vectors, target)
    click.echo(f"wrote {target} and {vocab}: {vectors.vocabulary_size:,} words, {vectors.dim}-d")


@features_group.command("list")
@click.pass_context
def list_sets(ctx: click.Context) -> None:
    """List feature sets (* marks the current one)."""
    from rich.table import Table

    from recsys.commands.database import open_engine
    from recsys.features.store import iter_feature_sets_table

    engine = open_engine(ctx.find_root().obj)
    table = Table()
    for column in (
        "id",
        "name",
        "source",
        "dim",
        "weighting",
        "current",
        "embedded",
        "skipped",
        "created",
    ):
        table.add_column(column)
    with engine.connect() as conn:
        for row in iter_feature_sets_table(conn):
            table.add_row(*(str(v) for v in row))
    _console().print(table)


@click.command("similar")
@click.argument("product")
@click.option("-k", "k", default=10, show_default=True, help="How many similar products.")
@click.pass_context
def similar(ctx: click.Context, product: str, k: int) -> None:
    """The K products most similar to PRODUCT (its external id) by text, cosine over the
    current feature set."""
    from rich.table import Table

    from recsys.commands.database import open_engine
    from recsys.features.similar import similar_to

    found = similar_to(open_engine(ctx.find_root().obj), product, k)
    table = Table(
        title=f"similar to {product} ({found.title or 'no title'}), "
        f"feature set {found.feature_set.name}"
    )
    for column in ("#", "product", "title", "brand", "cosine"):
        table.add_column(column)
    for rank, row in enumerate(found.similar, 1):
        table.add_row(
            str(rank), row.external_id, row.title or "", row.brand or "", f"{row.similarity:.3f}"
        )
    _console().print(table)


COMMANDS: list[click.Command] = [features_group, similar]
