"""The `clipsearch` command: the one place that wires indexer, web and search together."""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import logging
import os
import re
import signal
import sys
import threading
import time
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from search.catalog import ImageRecord
from search.collection import Collection, default_data_dir
from search.errors import BadRequest, ClipsearchError, NoQuery
from search.filters import FILTER_KEYS
from search.imaging import DEFAULT_MAX_PIXELS
from search.request import (
    DEFAULT_K,
    DUPLICATE_COSINE,
    MAX_K,
    MAX_OFFSET,
    MIN_DUPLICATE_COSINE,
    DuplicatesRequest,
    SearchRequest,
)
from search.sandbox import start_fork_server
from search.spec import ModelSpec

log = logging.getLogger("clipsearch")
T = TypeVar("T")
PRODUCT_CHARS = 100  # a catalog result's attributes, on its line of `clipsearch search`


class _Commands(click.Group):
    """Turns every expected failure into a one-line message and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ClipsearchError as exc:
            raise click.ClickException(str(exc)) from None


def _common(command: Callable[..., Any]) -> Callable[..., Any]:
    @click.option(
        "--data-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=default_data_dir,
        show_default="$CLIPSEARCH_DATA_DIR, else ~/.local/share/clipsearch",
        help="The collection's directory.",
    )
    @click.option(
        "--device",
        type=click.Choice(["auto", "cpu", "cuda"]),
        default="auto",
        show_default=True,
        help="Where the model runs; auto picks CUDA when there is a GPU.",
    )
    @click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors on stderr.")
    @functools.wraps(command)
    def wrapper(*args: Any, quiet: bool, **kwargs: Any) -> Any:
        _setup_logging(quiet)
        return command(*args, **kwargs)

    return wrapper


def _model_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The model a new collection is built with; an existing collection keeps its own."""
    options = [
        click.option("--model", help="open_clip architecture name or model-config JSON file."),
        click.option(
            "--pretrained",
            help="open_clip pretrained tag, a local checkpoint file, or 'none' (random weights).",
        ),
        click.option(
            "--text-model",
            type=click.Path(path_type=str),
            help="A local folder with the Hugging Face text model's config and tokenizer "
            "(save_pretrained), for multilingual models with no network.",
        ),
    ]
    return functools.reduce(lambda decorated, option: option(decorated), reversed(options), command)


def _rebuilt(
    data_dir: Path, spec: ModelSpec | None, device: str, batch_size: int | None, max_pixels: int
) -> Collection:
    """`index --rebuild`: the collection moved to `spec` (or to the model of the rebuild that
    was interrupted), before the folders are indexed as usual."""
    from indexer.rebuild import rebuild

    collection = Collection.create_or_open(data_dir, None)
    target = spec or collection.next_spec()
    if target is None:
        raise click.UsageError("--rebuild needs the new --model (and --pretrained)")
    if not target.same_model(collection.spec) or collection.next_spec() is not None:
        done = rebuild(collection, target, device, batch_size, max_pixels)
        log.info("embedded %d images with %s", done, target.describe())
    return collection


def _exclude_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--exclude",
        multiple=True,
        metavar="GLOB",
        help="Leave out what matches (gitignore syntax, repeatable), beside the "
        ".clipsearchignore files in the folders.",
    )(command)


def _spec(
    model: str | None, pretrained: str | None, text_model: str | None, data_dir: Path
) -> ModelSpec | None:
    """The model the options name, if they name one, for the collection in `data_dir`."""
    if not (model or pretrained or text_model):
        return None
    recorded = Collection.recorded_spec(data_dir)
    return ModelSpec.from_args(model, pretrained, text_model, recorded)


def _setup_logging(quiet: bool) -> None:
    # open_clip logs on the root logger what our own messages already say better.
    logging.basicConfig(format="clipsearch: %(message)s", level=logging.CRITICAL, force=True)
    level = logging.WARNING if quiet else logging.INFO
    for name in ("clipsearch", "search", "indexer", "web"):
        logging.getLogger(name).setLevel(level)


@click.group(cls=_Commands)
@click.version_option(package_name="clipsearch")
def cli() -> None:
    """Text-to-image semantic search over your own photos."""


@cli.command()
@click.argument(
    "folders",
    nargs=-1,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
)
@click.option(
    "--catalog",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A CSV (.tsv, .txt) or JSONL product catalog with an 'image' column (or image_link, "
    "image_url, Image Src), instead of folders.",
)
@click.option(
    "--encoding",
    metavar="NAME",
    callback=lambda _ctx, _param, value: value and _text_encoding(value),
    help="The --catalog file's encoding when it is not UTF-8: gb18030 (Excel in Chinese), "
    "cp1252 (Excel in Western Europe).",
)
@click.option(
    "--download",
    is_flag=True,
    help="Fetch the --catalog's images it gives as http(s) URLs into CATALOG.images/ beside "
    "it, once each, and index them from there.",
)
@_model_options
@click.option(
    "--batch-size",
    type=click.IntRange(1, 4096),
    help="Images per encoder call (256 on CUDA or with --ray; on a CPU 32 at 224 px, more for "
    "smaller inputs, at most 256).",
)
@click.option(
    "--workers",
    type=click.IntRange(0, 64),
    help="Decoding processes (default: one per core, at most 16).",
)
@click.option(
    "--max-pixels",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_PIXELS,
    show_default=True,
    help="Larger images are refused (decompression bombs).",
)
@click.option(
    "--ray",
    "use_ray",
    is_flag=True,
    help="Decode and encode on a Ray cluster (RAY_ADDRESS, else a local one); the folders must "
    "be on a filesystem every node reads.",
)
@click.option("--ray-address", metavar="ADDR", help="The Ray cluster to join (implies --ray).")
@click.option(
    "--rebuild",
    is_flag=True,
    help="Move the collection to --model/--pretrained in place: every image embedded again "
    "while servers keep answering, then one switch (resumes if interrupted).",
)
@_exclude_option
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary last.")
@_common
def index(
    folders: tuple[Path, ...],
    catalog: Path | None,
    encoding: str | None,
    download: bool,
    model: str | None,
    pretrained: str | None,
    text_model: str | None,
    batch_size: int | None,
    workers: int | None,
    max_pixels: int,
    use_ray: bool,
    ray_address: str | None,
    rebuild: bool,
    exclude: tuple[str, ...],
    as_json: bool,
    data_dir: Path,
    device: str,
) -> None:
    """Index the images under FOLDERS (recursively, incrementally), or a --catalog."""
    from indexer.sync import Indexer

    # Decode workers and the encoder's OpenMP threads share the cores. Spinning threads would
    # hold a core a worker needs (a light model indexed 15% slower); they must yield instead.
    # Read when torch loads, which is later.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if not (use_ray or ray_address):
        # The decode workers' server, whose imports (torch) take as long as this command's own.
        start_fork_server()

    if bool(folders) == bool(catalog):
        raise click.UsageError("give image FOLDERS or --catalog FILE (one of the two)")
    if (encoding or download) and not catalog:
        raise click.UsageError("--encoding and --download are about a --catalog file")
    spec = _spec(model, pretrained, text_model, data_dir)
    if rebuild:
        collection = _rebuilt(data_dir, spec, device, batch_size, max_pixels)
    else:
        collection = Collection.create_or_open(data_dir, spec)
    ray = ray_address or ("" if use_ray else None)
    indexer = Indexer(
        collection, None, batch_size, workers, max_pixels, device=device, ray=ray, excludes=exclude
    )
    try:
        summary = (
            indexer.run_catalog(catalog, encoding or "utf-8", download)
            if catalog
            else indexer.run(list(folders))
        )
    except KeyboardInterrupt:
        click.echo("clipsearch: interrupted; everything indexed so far is kept", err=True)
        sys.exit(130)
    if as_json:
        click.echo(json.dumps(summary.to_json()))
    else:
        s = summary
        click.echo(
            f"{s.scanned} files: {s.added} added, {s.updated} updated, {s.unchanged} unchanged, "
            f"{s.moved} moved, {s.removed} removed, {s.failed} failed in {s.seconds:.1f} s"
        )
        if s.failed:
            click.echo("see the failures with: clipsearch stats")


@cli.command()
@click.argument("text", required=False)
@click.option("--image", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--like", type=int, help="Images like the indexed image ID.")
@click.option("-k", type=int, default=DEFAULT_K, show_default=True, help=f"1 to {MAX_K}.")
@click.option("--offset", type=int, default=0, help=f"0 to {MAX_OFFSET}.")
@click.option("--min-score", type=float)
@click.option("--folder", help="Only images under this folder (relative to the indexed one).")
@click.option("--ext", help="Only these extensions, comma-separated.")
@click.option("--date-from", help="ISO date, inclusive.")
@click.option("--date-to", help="ISO date, inclusive.")
@click.option("--tag", help="Only images with these tags, comma-separated (see: clipsearch tags).")
@click.option("--attr", multiple=True, metavar="NAME=VALUE", help="Catalog attribute filter.")
@click.option("--include-query", is_flag=True, help="Keep the query's own images in the results.")
@click.option(
    "--collapse",
    type=float,
    is_flag=False,
    flag_value=DUPLICATE_COSINE,
    help=f"Show one of each group of near-duplicates (cosine at least {DUPLICATE_COSINE}, "
    "or the value given).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON response.")
@_common
def search(
    text: str | None,
    image: Path | None,
    like: int | None,
    attr: tuple[str, ...],
    as_json: bool,
    data_dir: Path,
    device: str,
    **options: Any,
) -> None:
    """Find the images that best match TEXT, an --image file, or an indexed image (--like).

    TEXT may combine weighted terms, and a term may be an image file:
    'cat + 2:grass - dog', 'beach - people', 'photo.jpg + snow'. A `clipsearch serve` running
    on the collection answers it, in a fraction of the time (unless --device names cpu or cuda).
    """
    fields = _search_fields(text, image, like, attr, options)
    request = _usage(SearchRequest.parse, fields)
    collection = Collection.open(data_dir)
    answer = _served(data_dir, fields) if device == "auto" else None
    if answer is None:
        answer = _searched(collection, request, device)
    if isinstance(notice := answer.get("notice"), dict):  # a server's answer is checked lightly
        log.warning("%s", notice.get("message"))
    if as_json:
        click.echo(json.dumps(answer, indent=2))
        return
    results = answer["results"]
    paths = collection.catalog.file_paths([result["id"] for result in results])
    for result in results:
        where = paths.get(result["id"], result["path"])  # removed since: as the server says it
        click.echo(_line(f"{result['score']:.4f}  {result['id']:>7}  {where}{_product(result)}"))
    if not results:
        click.echo("no results", err=True)


def _line(text: str) -> str:
    """A line for the terminal, its control characters written out (\\n, \\x1b): a file name
    or a product's description may hold a newline, which broke the line, or an escape sequence,
    which a terminal would obey (recolour, clear the screen, retitle the window)."""
    return "".join(
        repr(char)[1:-1] if unicodedata.category(char) == "Cc" else char for char in text
    )


def _product(result: dict[str, Any]) -> str:
    """A catalog result's attributes after its path, cut to a line: sku=A1 price=3.5."""
    line = "  ".join(f"{name}={value}" for name, value in result.get("attributes", {}).items())
    if len(line) > PRODUCT_CHARS:
        line = line[: PRODUCT_CHARS - 1] + "…"
    return f"  {line}" if line else ""


def _served(data_dir: Path, fields: dict[str, Any]) -> dict[str, Any] | None:
    """The answer of a `clipsearch serve` on this collection, if one is running and answers."""
    from clipsearch.served import ask, server_url

    if (url := server_url(data_dir)) is None:
        return None
    answer = ask(url, fields)
    if answer is not None:
        log.info("answered by the server at %s", url)
    return answer


def _searched(collection: Collection, request: SearchRequest, device: str) -> dict[str, Any]:
    """The answer, with the model loaded here; the API's shape, URLs included."""
    from search.engine import SearchEngine
    from web.results import page_json

    if request.has_image:
        start_fork_server()  # the image's decoder, whose imports overlap the model's loading
    engine = SearchEngine(collection, collection.encoder(device))
    return page_json(engine.query(request), collection.spec.name)


def _search_fields(
    text: str | None,
    image: Path | None,
    like: int | None,
    attr: tuple[str, ...],
    options: dict[str, Any],
) -> dict[str, Any]:
    """The command line as the fields of a search request (the API's JSON body, with image
    bytes as they are)."""
    from search.syntax import parse_query

    terms: dict[str, list[dict[str, Any]]] = {"positive": [], "negative": []}
    for part in _usage(parse_query, text or ""):
        file = Path(part.text)
        term = {"image_b64": file.read_bytes()} if file.is_file() else {"text": part.text}
        terms["negative" if part.negative else "positive"].append({**term, "weight": part.weight})
    if image:
        terms["positive"].append({"image_b64": image.read_bytes()})
    filters = {key: options.pop(key) for key in FILTER_KEYS if options.get(key) is not None}
    filters.update(_attr_filters(attr))
    options = {key: value for key, value in options.items() if value is not None}
    return {"collapse": False, **terms, **options, "image_id": like, "filters": filters}


def _attr_filters(attr: tuple[str, ...]) -> dict[str, str]:
    """`--attr NAME=VALUE` options, each NAME once, as the API takes each parameter once."""
    filters: dict[str, str] = {}
    for item in attr:
        name, sep, value = item.partition("=")
        if not sep:
            raise click.UsageError(f"--attr takes NAME=VALUE, got {item!r}")
        key = name if name.startswith("attr_") else f"attr_{name}"
        if key in filters:
            raise click.UsageError(f"--attr {name} is given twice; give it once")
        filters[key] = value
    return filters


def _usage(parse: Callable[..., T], *args: Any) -> T:
    try:
        return parse(*args)
    except NoQuery:
        raise click.UsageError("give TEXT, --image FILE or --like ID") from None
    except BadRequest as exc:
        raise click.UsageError(str(exc)) from None


@cli.command()
@click.argument(
    "folders",
    nargs=-1,
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
)
@_model_options
@_exclude_option
@click.option("--json", "as_json", is_flag=True, help="Print each run's summary as a JSON line.")
@_common
def watch(
    folders: tuple[Path, ...],
    model: str | None,
    pretrained: str | None,
    text_model: str | None,
    exclude: tuple[str, ...],
    as_json: bool,
    data_dir: Path,
    device: str,
) -> None:
    """Index FOLDERS, then follow them: new, changed, moved and deleted photos are applied as
    they happen, until Ctrl-C or SIGTERM."""
    from indexer.sync import Indexer
    from indexer.watch import Watcher

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `index`: workers share the cores
    collection = Collection.create_or_open(data_dir, _spec(model, pretrained, text_model, data_dir))
    indexer = Indexer(collection, device=device, excludes=exclude, progress=False)
    stop = threading.Event()
    _stop_on_signals(stop)
    with contextlib.suppress(KeyboardInterrupt):  # the signal's: a run kept what it committed
        Watcher(indexer, list(folders), functools.partial(_report, as_json)).run(stop)
    click.echo("clipsearch: stopped watching; everything indexed is kept", err=True)


def _stop_on_signals(stop: threading.Event) -> None:
    """SIGINT and SIGTERM set `stop` and, the first time, interrupt the work under way."""

    def stopping(signum: int, frame: Any) -> None:
        if not stop.is_set():
            stop.set()
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, stopping)
    signal.signal(signal.SIGTERM, stopping)


def _report(as_json: bool, summary: Any) -> None:
    """One line a run that changed something (a JSON line for every run with --json)."""
    s = summary
    if as_json:
        click.echo(json.dumps(s.to_json()))
    elif s.added or s.updated or s.moved or s.removed:
        click.echo(
            f"{time.strftime('%H:%M:%S')}  {s.added} added, {s.updated} updated, "
            f"{s.moved} moved, {s.removed} removed, {s.failed} failed"
        )


@cli.command()
@click.option(
    "--threshold",
    type=float,
    default=DUPLICATE_COSINE,
    show_default=True,
    help=f"The cosine from which two images are copies ({MIN_DUPLICATE_COSINE} to 1).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON, every group.")
@_common
def duplicates(threshold: float, as_json: bool, data_dir: Path, device: str) -> None:
    """Groups of copies of one photo: the same bytes, or resized, re-encoded and burst copies
    (cosine at least --threshold); the best copy (most pixels, then earliest) first."""
    from search.duplicates import duplicate_groups, find_pairs

    wanted = _usage(DuplicatesRequest.from_flat, {"threshold": threshold})
    collection = Collection.open(data_dir)
    vectors, _ = collection.load_vectors()
    pairs = find_pairs(collection.catalog, vectors, wanted.threshold)
    groups = duplicate_groups(collection.catalog, pairs, wanted.threshold)
    if as_json:
        from web.results import duplicates_json

        everything = wanted.model_copy(update={"limit": max(1, len(groups))})
        click.echo(json.dumps(duplicates_json(groups, everything), indent=2))
        return
    for best, *copies in groups:
        click.echo(_line(f"keep  {best.record.file_path}  ({_pixels(best.record)})"))
        for copy in copies:
            same = "same file" if copy.same_file else f"cosine {copy.score:.4f}"
            click.echo(_line(f"      {copy.record.file_path}  ({_pixels(copy.record)}, {same})"))
    click.echo(f"groups of copies: {len(groups)}", err=True)


def _pixels(record: ImageRecord) -> str:
    return f"{record.width}x{record.height}"


@cli.command()
@click.option(
    "--vocabulary",
    metavar="FILE|default",
    help="Tag with the words of FILE (one per line, any language the model reads) or with the "
    "list clipsearch ships; every image is tagged again from its stored vector, none re-read.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the tags and counts as JSON.")
@_common
def tags(vocabulary: str | None, as_json: bool, data_dir: Path, device: str) -> None:
    """The zero-shot tags of the collection's images, the most common first, with how many
    images have each; --vocabulary changes the words."""
    from search.filters import tag_counts
    from search.tags import Vocabulary

    collection = Collection.open(data_dir)
    if vocabulary is not None:
        from indexer.tagging import retag

        default = vocabulary == "default"
        chosen = Vocabulary.default() if default else Vocabulary.read(Path(vocabulary))
        done = retag(collection, chosen, lambda: collection.encoder(device))
        log.info("tagged %d images with a vocabulary of %d tags", done, len(chosen.names))
    with collection.catalog.sessions() as session:
        counts = tag_counts(session)
    if as_json:
        click.echo(json.dumps(counts, indent=2))
        return
    for tag in counts:
        click.echo(f"{tag['count']:>8}  {tag['name']}")
    if untagged := collection.catalog.counts()["untagged"]:
        click.echo(f"{untagged} images are not tagged yet: run 'clipsearch index'", err=True)


@cli.command("eval")
@click.option(
    "--images",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="The captioned images (indexed first, incrementally).",
)
@click.option(
    "--captions",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="CSV with 'image' (relative to --images) and 'caption' columns.",
)
@_model_options
@click.option("--json", "as_json", is_flag=True, help="Print the figures as one JSON object.")
@_common
def evaluate(
    images: Path,
    captions: Path,
    model: str | None,
    pretrained: str | None,
    text_model: str | None,
    as_json: bool,
    data_dir: Path,
    device: str,
) -> None:
    """Text→image recall@1/5/10 of a model on your own captioned images.

    Each caption is a query; its own image is the relevant result. The images are indexed into
    --data-dir; give each model its own --data-dir to compare models.
    """
    from indexer.sync import Indexer
    from search.evaluation import evaluate, read_captions

    rows = read_captions(captions)
    spec = _spec(model, pretrained, text_model, data_dir)
    collection = Collection.create_or_open(data_dir, spec)
    indexer = Indexer(collection, device=device)
    indexer.run([images])
    figures = evaluate(collection, indexer.encoder, images, rows)
    if as_json:
        click.echo(json.dumps(figures))
        return
    recalls = "  ".join(f"{key} {figures[key]:.3f}" for key in figures if key.startswith("recall"))
    click.echo(
        f"{figures['model']}: {recalls}  (median rank {figures['median_rank']}, "
        f"{figures['captions']} captions over {figures['images']} images)"
    )


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--threads", type=click.IntRange(1, 256), default=8, show_default=True)
@click.option(
    "--cors-origin",
    "cors_origins",
    multiple=True,
    metavar="ORIGIN",
    help="Let pages of ORIGIN (https://shop.example) call the JSON API; '*' for any. Repeatable.",
)
@click.option(
    "--url-prefix",
    default="",
    metavar="PATH",
    callback=lambda _ctx, _param, value: _url_prefix(value),
    help="Serve under PATH (/photos) behind a reverse proxy: every link and URL starts with it.",
)
@click.option(
    "--watch",
    "watched",
    multiple=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Also index this folder and follow its changes (`clipsearch watch`). Repeatable.",
)
@_exclude_option
@_common
def serve(
    host: str,
    port: int,
    threads: int,
    cors_origins: tuple[str, ...],
    url_prefix: str,
    watched: tuple[Path, ...],
    exclude: tuple[str, ...],
    data_dir: Path,
    device: str,
) -> None:
    """Serve the search page and the JSON API on a production WSGI server (waitress)."""
    import faiss
    import torch
    from waitress import create_server

    from clipsearch.served import announced
    from web import create_app

    # Requests run side by side on the server's threads; one search split over OpenMP threads
    # as well only makes them wait on each other (a flat search: 0.76 ms on one, 1.04 on two).
    faiss.omp_set_num_threads(1)

    if watched:
        _watch_beside(data_dir, device, watched, exclude)
    app = create_app({"DATA_DIR": data_dir, "DEVICE": device, "CORS_ORIGINS": list(cors_origins)})
    # Request handling holds the GIL, so it never uses more than one core: the model gets the
    # others. On 2 cores this serves 11% more requests at 32 clients; a lone text query takes
    # 16 ms instead of 11 (benchmarks/load.py).
    torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))
    server = create_server(
        app,
        host=host,
        port=port,
        threads=threads,
        url_prefix=url_prefix,
        **(_connection_limits(app.config["MAX_CONTENT_LENGTH"])),
    )
    log.info("serving %s on http://%s:%s%s/", data_dir, host, server.effective_port, url_prefix)
    # A service manager stops it with SIGTERM: the same clean stop as Ctrl-C, which waitress
    # ends in an exit 0 and which withdraws the announcement.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with announced(data_dir, server.effective_host, server.effective_port, url_prefix):
        server.run()


def _connection_limits(max_content_length: int) -> dict[str, Any]:
    """What waitress takes from a client before the app sees a request. By default it accepts
    100 connections, each kept 2 minutes when idle, so 100 browsers left open (or a stranger's
    100 sockets sending a header slowly) stopped it answering anyone; 1,000 need poll(), as
    select() takes 1,024 descriptors at most. It reads a body of up to 1 GB to a temporary file
    before the app could refuse it; twice the app's limit leaves a body a little over it to the
    app's JSON 413, and refuses one far over it from its header alone."""
    return {
        "connection_limit": 1000,
        "asyncore_use_poll": True,
        "max_request_body_size": 2 * max_content_length,
    }


def _text_encoding(name: str) -> str:
    try:
        "".encode(name)  # LookupError for a name Python does not know, and for base64 and such
    except LookupError:
        message = f"{name!r} is not a text encoding (utf-8, gb18030, cp1252...)"
        raise click.BadParameter(message) from None
    return name


def _url_prefix(value: str) -> str:
    """`photos`, `/photos/` and `/photos` are one prefix; "" mounts the app at the root."""
    prefix = "/" + value.strip("/") if value.strip("/") else ""
    if not re.fullmatch(r"(/[\w~-][\w.~-]*)*", prefix, flags=re.ASCII):
        raise click.BadParameter(f"{value!r}: give a path such as /photos (letters, digits, ._~-)")
    return prefix


def _watch_beside(
    data_dir: Path, device: str, folders: tuple[Path, ...], exclude: tuple[str, ...]
) -> None:
    """`serve --watch`: the watcher on a thread of the server's process, with a model of its
    own (made once a file needs it); the server follows its generations as it follows any
    indexer's. The collection is made first, with the default model, if there is none yet."""
    from indexer.sync import Indexer
    from indexer.watch import Watcher

    collection = Collection.create_or_open(data_dir, None)
    indexer = Indexer(collection, device=device, excludes=exclude, progress=False)
    watcher = Watcher(indexer, list(folders), functools.partial(_report, False))

    def watching() -> None:
        try:
            watcher.run(threading.Event())  # stops with the process: every run is crash-safe
        except ClipsearchError as exc:
            log.error("stopped watching: %s", exc)

    threading.Thread(target=watching, name="clipsearch-watch", daemon=True).start()


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@_common
def stats(as_json: bool, data_dir: Path, device: str) -> None:
    """Counts, model, index type, and the files that failed with their reasons."""
    data = Collection.open(data_dir).stats()
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(f"collection  {data_dir}")
    click.echo(f"model       {data['model']} ({data['embed_dim']}-d)")
    click.echo(f"languages   {'many (multilingual)' if data['multilingual'] else 'English'}")
    click.echo(f"images      {data['images']}")
    click.echo(f"index       {data['index']['type']}, {data['index']['vectors']} vectors")
    tags = data["tags"]
    whose = "the default vocabulary" if tags["default"] else "your vocabulary"
    click.echo(f"tags        {tags['vocabulary']} ({whose}), {tags['untagged']} images untagged")
    click.echo(f"failed      {data['failed']}")
    for failure in data["failures"]:
        click.echo(_line(f"  {Path(failure['root'], failure['path'])}: {failure['reason']}"))
    for root in data["roots"]:
        if root["catalog"]:
            click.echo(_line(f"catalog     {Path(root['path'], root['catalog'])}"))
        else:
            click.echo(_line(f"folder      {root['path']}"))
        if root.get("exclude"):
            click.echo(f"  --exclude {' '.join(root['exclude'])}")
        for name, patterns in root.get("ignore_files", {}).items():
            click.echo(f"  {name}: {', '.join(patterns) or '(no patterns)'}")


def main() -> None:
    try:
        cli(prog_name="clipsearch")
    finally:
        # Exiting frees it all: the interpreter's teardown would first trace every object
        # torch and open_clip made, 0.4 s after a run that loaded a model. What must be closed
        # is closed by handlers that run at exit all the same (catalogs: search/catalog.py).
        gc.freeze()
