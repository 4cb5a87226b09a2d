"""Catalog mode: a shop's CSV or JSONL product list, its columns kept as filterable attributes."""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import math
import re
import shutil
import threading
import time
from pathlib import Path
from typing import ClassVar

import pytest
from sqlalchemy import text

from indexer import download
from indexer.catalog_file import read_catalog
from indexer.sync import Indexer
from search import filters
from search.collection import Collection
from search.engine import SearchEngine
from search.errors import ClipsearchError
from search.model import Encoder
from tests.conftest import SAMPLES, TINY_ARGS, ask, one_line, run_cli, write_shop

PRODUCTS = [
    {
        "image": "img/red-apple.jpg",
        "sku": "A1",
        "title": "Apple",
        "price": "1.5",
        "category": "fruit",
    },
    {
        "image": "img/yellow-flower.jpg",
        "sku": "F1",
        "title": "Sunflower",
        "price": "4",
        "category": "garden",
    },
    {
        "image": "img/pine-forest.jpg",
        "sku": "T1",
        "title": "Pine",
        "price": "120",
        "category": "garden",
    },
    {
        "image": "img/sailing-boat.jpg",
        "sku": "B1",
        "title": "Boat",
        "price": "9999",
        "category": "toys",
    },
    {"image": "img/missing.jpg", "sku": "X1", "title": "Gone", "price": "1", "category": "fruit"},
]


def test_csv_catalog_attributes_filters_and_updates(tmp_path: Path, encoder: Encoder) -> None:
    catalog = write_shop(tmp_path / "shop", PRODUCTS)
    collection = Collection.create_or_open(tmp_path / "data", encoder.spec)
    indexer = Indexer(collection, encoder, batch_size=2, workers=0, progress=False)

    summary = indexer.run_catalog(catalog)

    assert (summary.added, summary.failed) == (4, 1)
    assert "missing" in collection.stats()["failures"][0]["reason"]
    engine = SearchEngine(collection, encoder)
    query = "something to buy"
    hits = ask(engine, text=query, k=10).hits
    assert {h.record.attributes["sku"] for h in hits} == {"A1", "F1", "T1", "B1"}
    assert hits[0].record.attributes["title"]

    garden = ask(engine, text=query, k=10, filters={"attr_category": "garden"}).hits
    assert {h.record.attributes["sku"] for h in garden} == {"F1", "T1"}
    cheap = ask(engine, text=query, k=10, filters={"attr_price_max": "100"}).hits
    assert {h.record.attributes["sku"] for h in cheap} == {"A1", "F1"}
    band = {"attr_price_min": 4, "attr_price_max": 120}
    assert {
        h.record.attributes["sku"] for h in ask(engine, text=query, k=10, filters=band).hits
    } == {
        "F1",
        "T1",
    }

    # A price change updates the attribute without re-encoding; a dropped row leaves the index.
    rows = [dict(PRODUCTS[0], price="2.0"), *PRODUCTS[1:3]]
    write_shop(tmp_path / "shop", rows)
    summary = indexer.run_catalog(catalog)
    assert (summary.added, summary.updated, summary.unchanged, summary.removed) == (0, 0, 3, 1)
    apple = ask(engine, text=query, k=10, filters={"attr_sku": "A1"}).hits
    assert apple[0].record.attributes["price"] == "2.0"
    assert len(ask(engine, text=query, k=10).hits) == 3

    # Only a category changes: the server's cached garden filter must not outlive it.
    garden = {"attr_category": "garden"}
    assert {h.record.attributes["sku"] for h in ask(engine, text=query, filters=garden).hits} == {
        "F1",
        "T1",
    }
    saved, in_memory = collection.vectors_path(collection.catalog.generation()), engine.vectors
    saved_inode = saved.stat().st_ino
    write_shop(tmp_path / "shop", [rows[0], dict(rows[1], category="kitchen"), rows[2]])
    assert indexer.run_catalog(catalog).unchanged == 3
    # The vectors did not change: their file, not read or written, takes the new generation,
    # and the server keeps the index it holds.
    vectors = list((tmp_path / "data").glob("vectors-*.faiss"))
    assert vectors == [collection.vectors_path(collection.catalog.generation())]
    assert vectors[0] != saved and vectors[0].stat().st_ino == saved_inode
    assert [h.record.attributes["sku"] for h in ask(engine, text=query, filters=garden).hits] == [
        "T1"
    ]
    assert engine.vectors is in_memory


def test_a_folder_run_over_a_shops_folder_is_refused(tmp_path: Path, encoder: Encoder) -> None:
    """A folder run over the shop's folder, inside it or around it, would drop every product's
    attributes and add every image there, listed or not."""
    catalog = write_shop(tmp_path / "shop", PRODUCTS[:2])
    collection = Collection.create_or_open(tmp_path / "data", encoder.spec)
    indexer = Indexer(collection, encoder, workers=0, progress=False)
    indexer.run_catalog(catalog)
    refused = f"{tmp_path / 'shop'} is indexed from its catalog: run 'clipsearch index --catalog "
    for folder in (tmp_path / "shop", tmp_path / "shop" / "img", tmp_path):
        with pytest.raises(ClipsearchError, match=re.escape(f"{refused}{catalog}'")):
            indexer.run([folder])
    assert collection.stats()["roots"] == [
        {"path": str(tmp_path / "shop"), "catalog": "products.csv"}
    ]
    assert found(SearchEngine(collection, encoder), "title") == {"Apple", "Sunflower"}


def test_attributes_stored_in_another_spelling_are_no_change(
    tmp_path: Path, encoder: Encoder
) -> None:
    """A run compares each row's stored attributes as text first; JSON spelt otherwise (as
    SQLite's json() writes it, which a migration may use) is compared by its values, so that
    an unchanged catalog moves no generation and servers keep their cached filters."""
    catalog = write_shop(tmp_path / "shop", PRODUCTS[:2])
    collection = Collection.create_or_open(tmp_path / "data", encoder.spec)
    indexer = Indexer(collection, encoder, workers=0, progress=False)
    indexer.run_catalog(catalog)
    with collection.catalog.transaction() as session:
        session.execute(text("UPDATE images SET attributes = json(attributes)"))
    generation = collection.catalog.generation()

    assert indexer.run_catalog(catalog).unchanged == 2
    assert collection.catalog.generation() == generation

    write_shop(tmp_path / "shop", [dict(PRODUCTS[0], price="2"), PRODUCTS[1]])
    indexer.run_catalog(catalog)
    assert collection.catalog.generation() > generation
    assert found(SearchEngine(collection, encoder), "price", attr_sku="A1") == {"2"}


def shop_engine(tmp_path: Path, encoder: Encoder, rows: list[dict[str, str]]) -> SearchEngine:
    """The shop's catalog indexed, and the engine a server would answer with."""
    collection = Collection.create_or_open(tmp_path / "data", encoder.spec)
    catalog = write_shop(tmp_path / "shop", rows)
    Indexer(collection, encoder, workers=0, progress=False).run_catalog(catalog)
    return SearchEngine(collection, encoder)


def found(engine: SearchEngine, column: str = "sku", **filters: object) -> set[str]:
    """The `column` of every product the filters let through."""
    hits = ask(engine, text="something to buy", k=10, filters=filters).hits
    return {hit.record.attributes[column] for hit in hits}


def test_a_price_that_is_not_a_number_is_in_no_range(tmp_path: Path, encoder: Encoder) -> None:
    """A shop's feed leaves a price blank or writes '12 USD': SQLite's CAST read those as 0 and
    12, so they passed `price <= 20`, and one blank price made the price facet a list."""
    rows = [
        PRODUCTS[0],
        dict(PRODUCTS[1], price=""),
        dict(PRODUCTS[2], price="12 USD"),
        dict(PRODUCTS[3], price=" 9.50 "),
    ]
    engine = shop_engine(tmp_path, encoder, rows)
    assert found(engine, attr_price_max=20) == found(engine, attr_price_min=-1) == {"A1", "B1"}
    everything = {"A1", "F1", "T1", "B1"}
    assert found(engine, attr_price_max="", attr_category="") == everything  # "": no filter
    assert engine.facets()["attributes"]["price"] == {"min": 1.5, "max": 9.5}


def test_facets_past_the_sample_come_from_every_product(
    tmp_path: Path, encoder: Encoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The facets were read from the first 100,000 distinct values: past about 30,000
    products, a category that only the last ones have was not offered, and the price range
    ended short. Here the sample is the first two products' values."""
    monkeypatch.setattr(filters, "FACET_SAMPLE", 8)
    engine = shop_engine(tmp_path, encoder, PRODUCTS[:4])
    attributes = engine.facets()["attributes"]
    assert attributes["category"] == {"values": ["fruit", "garden", "toys"]}
    assert attributes["price"] == {"min": 1.5, "max": 9999}
    assert attributes["sku"] == {"values": ["A1", "B1", "F1", "T1"]}


def test_a_chinese_shops_columns_are_filters_and_facets(tmp_path: Path, encoder: Encoder) -> None:
    """Column names in any script: 价格 was refused as a parameter, and SQLite (before 3.45)
    found no key 价格 in the stored JSON, which spells it \\u4ef7\\u683c."""
    rows = [
        {"image": "img/red-apple.jpg", "货号": "A1", "价格": "1.5", "类别": "水果"},
        {"image": "img/yellow-flower.jpg", "货号": "F1", "价格": "4", "类别": "花园"},
        {"image": "img/pine-forest.jpg", "货号": "T1", "价格": "120", "类别": "花园"},
    ]
    engine = shop_engine(tmp_path, encoder, rows)
    assert found(engine, "货号", attr_类别="花园") == {"F1", "T1"}
    assert found(engine, "货号", attr_价格_max=10) == {"A1", "F1"}
    assert found(engine, "货号", attr_类别="花园", attr_价格_min=10) == {"T1"}
    attributes = engine.facets()["attributes"]
    assert attributes["价格"] == {"min": 1.5, "max": 120}
    assert attributes["类别"] == {"values": ["水果", "花园"]}


def test_a_jsonl_shops_nan_and_booleans(tmp_path: Path, encoder: Encoder) -> None:
    """Python's json.dumps writes a missing price as NaN: stored as it was, SQLite (before
    3.42) then answered every filter and facet of the collection with "malformed JSON". And
    `"in_stock": true` matched no `attr_in_stock=true`: json_extract reads true as 1."""
    write_shop(tmp_path / "shop", PRODUCTS[:4])
    lines = [
        {"image": "img/red-apple.jpg", "sku": "A1", "price": 1.5, "in_stock": True},
        {"image": "img/yellow-flower.jpg", "sku": "F1", "price": math.nan, "in_stock": False},
        {"image": "img/pine-forest.jpg", "sku": "T1", "price": math.inf, "in_stock": True},
        {"image": "img/sailing-boat.jpg", "sku": "B1", "price": 9, "in_stock": "true"},
    ]
    catalog = tmp_path / "shop" / "products.jsonl"
    catalog.write_text("".join(json.dumps(line) + "\n" for line in lines))
    collection = Collection.create_or_open(tmp_path / "data", encoder.spec)
    Indexer(collection, encoder, workers=0, progress=False).run_catalog(catalog)
    engine = SearchEngine(collection, encoder)
    assert found(engine, attr_price_max=10) == {"A1", "B1"}
    assert found(engine, attr_in_stock="true") == {"A1", "T1", "B1"}
    assert found(engine, attr_in_stock="false") == {"F1"}
    attributes = engine.facets()["attributes"]
    assert attributes["price"] == {"min": 1.5, "max": 9}
    assert attributes["in_stock"] == {"values": ["false", "true"]}


def test_jsonl_catalog_through_the_cli(tmp_path: Path) -> None:
    shop = tmp_path / "shop"
    write_shop(shop, PRODUCTS[:2])
    catalog = shop / "products.jsonl"
    catalog.write_text(
        "\n".join(
            json.dumps({"image": row["image"], "sku": row["sku"], "price": float(row["price"])})
            for row in PRODUCTS[:2]
        )
    )
    data = ["--data-dir", str(tmp_path / "data")]
    result = run_cli("index", "--catalog", str(catalog), *TINY_ARGS, *data, "--json")
    assert json.loads(result.stdout.splitlines()[-1])["added"] == 2
    found = json.loads(run_cli("search", "apple", "--attr", "price=1.5", *data, "--json").stdout)
    assert [r["attributes"]["sku"] for r in found["results"]] == ["A1"]
    assert found["results"][0]["attributes"]["price"] == 1.5
    line = run_cli("search", "apple", "--attr", "price=1.5", *data).stdout.strip()
    assert line.endswith("img/red-apple.jpg  sku=A1  price=1.5"), line  # the product, in a terminal
    assert f"catalog     {catalog}" in run_cli("stats", *data).stdout
    refused = run_cli("index", str(shop), *data, check=False)
    assert refused.returncode == 1
    assert one_line(refused.stderr).endswith(f"--catalog {catalog}' (or index the photos into "
                                             "another --data-dir)")  # fmt: skip


@pytest.mark.parametrize(
    ("content", "suffix", "message"),
    [
        ("sku,title\nA1,Apple\n", ".csv", "no 'image' column"),
        ('{"image": "../outside.jpg"}\n', ".jsonl", "inside the catalog's folder"),
        ("image\nHTTPS://cdn.example/a.jpg\n", ".csv", ":2: image 'HTTPS://cdn.* --download"),
        ("not json\n", ".jsonl", "not valid JSON"),
        ('{"img": "a.jpg"}\n{"img": "b.jpg"}\n', ".jsonl", "no row has an 'image'"),
        ("<rss><channel/></rss>\n", ".xml", r"must be a \.csv \(\.tsv, \.txt\) or \.jsonl"),
        ("image,title\nimg/a.jpg,Shoes, red\n", ".csv", ":2: 3 fields where the header has 2"),
        # A row after a description on two lines starts on line 4.
        ('image,title\na.jpg,"Two\nlines"\nb.jpg,Shoes, red\n', ".csv", ":4: 3 fields where"),
        # A quote left open: the products after it were read as its title, and left out.
        ('image,title\na.jpg,"12 inch\nb.jpg,Pear\nc.jpg,Fig\n', ".csv", ":2: unexpected end"),
        ("image,标题\nimg/a.jpg,鞋\n".encode("gb18030"), ".csv", "is not utf-8 text.*gb18030"),
    ],
)
def test_bad_catalogs_are_refused_with_a_reason(
    tmp_path: Path, encoder: Encoder, content: str | bytes, suffix: str, message: str
) -> None:
    catalog = tmp_path / f"products{suffix}"
    catalog.write_bytes(content if isinstance(content, bytes) else content.encode())
    collection = Collection.create_or_open(tmp_path / "data", encoder.spec)
    with pytest.raises(ClipsearchError, match=message):
        Indexer(collection, encoder, workers=0, progress=False).run_catalog(catalog)


def columns(catalog: Path, encoding: str = "utf-8") -> dict[str, dict[str, object]]:
    """Each listed image's attributes, which read_catalog keeps as JSON text."""
    rows = read_catalog(catalog, encoding)
    return {key: json.loads(text) for key, text in rows.attributes.items()}


def test_a_catalog_as_excel_saves_it(tmp_path: Path) -> None:
    """Excel in Chinese saves GB18030; in much of Europe it separates with ';' (the comma is
    the decimal point) and puts a byte-order mark before UTF-8; a row may end short."""
    for name in ("a.jpg", "b.jpg"):
        shutil.copy2(SAMPLES / "red-apple.jpg", tmp_path / name)
    chinese = tmp_path / "商品.csv"
    chinese.write_bytes("image,货号,价格\na.jpg,A1,3\n".encode("gb18030"))
    assert columns(chinese, "gb18030") == {"a.jpg": {"货号": "A1", "价格": "3"}}
    european = tmp_path / "produits.csv"
    rows = "a.jpg;A1;3,50;1\nb.jpg;B1\nc.jpg;C1;1.234,50;2\nd.jpg;D1;sur demande;3\n"
    european.write_bytes(f"\ufeffimage;réf;prix;stock\n{rows}".encode())
    shutil.copy2(tmp_path / "a.jpg", tmp_path / "c.jpg")
    shutil.copy2(tmp_path / "a.jpg", tmp_path / "d.jpg")
    assert columns(european) == {  # the decimal comma, read as a range reads it
        "a.jpg": {"réf": "A1", "prix": "3.50", "stock": "1"},
        "b.jpg": {"réf": "B1"},  # no price: no attribute, rather than null
        "c.jpg": {"réf": "C1", "prix": "1234.50", "stock": "2"},
        "d.jpg": {"réf": "D1", "prix": "sur demande", "stock": "3"},
    }


class Cdn(http.server.SimpleHTTPRequestHandler):
    """A shop's image host: the sample images, one that says it is 200 MB, and one that
    trickles."""

    requests: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        Cdn.requests.append(self.path)
        if self.path == "/huge.jpg":
            self._headers(200 * 2**20)
        elif self.path == "/slow.jpg":
            self._headers(50)
            with contextlib.suppress(OSError):  # a byte every 0.1 s, until the client leaves
                for _ in range(50):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.1)
        else:
            super().do_GET()

    def _headers(self, length: int) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(length))
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_a_catalog_of_urls_is_downloaded_once(
    tmp_path: Path, encoder: Encoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shop's export lists its CDN's addresses: each failed as 'missing' under a mangled
    path. With --download each image is fetched once into products.images/; a 404, an
    oversized body, a host that trickles or a malformed URL is that row's failure, tried again
    by the next run."""
    monkeypatch.setattr(download, "DEADLINE_SECONDS", 0.5)
    handler = functools.partial(Cdn, directory=str(SAMPLES))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as cdn:
        threading.Thread(target=cdn.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{cdn.server_address[1]}"
        lines = ["image,sku", f"{base}/red-apple.jpg,A1", f"{base}/snowman.png?v=2,S1"]
        lines += [f"{base}/gone.jpg,G1", f"{base}/huge.jpg,H1", "http://[::1/x.jpg,V1"]
        lines += [f"{base}/slow.jpg,T1"]
        catalog = tmp_path / "shop" / "products.csv"
        catalog.parent.mkdir()
        catalog.write_text("\n".join(lines) + "\n")
        collection = Collection.create_or_open(tmp_path / "data", encoder.spec)
        indexer = Indexer(collection, encoder, workers=0, progress=False)
        with pytest.raises(ClipsearchError, match=r":2: .* is a URL: add --download .*images"):
            indexer.run_catalog(catalog)
        first = indexer.run_catalog(catalog, download=True)
        asked = len(Cdn.requests)
        again = indexer.run_catalog(catalog, download=True)
        assert len(Cdn.requests) - asked == 3  # only those that failed are asked for again
        assert found(SearchEngine(collection, encoder)) == {"A1", "S1"}
        # A1 leaves the shop: its download goes with it, and what is not ours stays.
        images = tmp_path / "shop" / "products.images"
        apple, snowman = sorted(images.glob("*/*.*"), key=lambda p: "png" in p.name)
        theirs = [images / "notes.txt", apple.with_name("photo.jpg")]
        for path in theirs:
            path.write_text("not a download")
        catalog.write_text("\n".join(line for line in lines if "A1" not in line) + "\n")
        dropped = indexer.run_catalog(catalog, download=True)
        cdn.shutdown()
    assert (first.added, first.failed, again.unchanged, again.failed) == (2, 4, 2, 4)
    assert (dropped.removed, dropped.unchanged) == (1, 1)
    assert not apple.exists() and snowman.exists() and all(path.exists() for path in theirs)
    reasons = sorted(failure["reason"] for failure in collection.stats()["failures"])
    assert reasons == [
        f"download failed: HTTP 404 File not found ({base}/gone.jpg)",
        "download failed: Invalid IPv6 URL (http://[::1/x.jpg)",
        f"download failed: still unfinished after 0.5 s ({base}/slow.jpg)",
        f"download refused: over 100 MB ({base}/huge.jpg)",
    ]
    assert found(SearchEngine(collection, encoder)) == {"S1"}
    assert len(list(images.glob("*/*.*"))) == 2  # snowman and theirs: no .part


def test_a_capitalised_image_column_and_products_without_a_photo(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A header 'Image' (or a feed's image_link) was 'no image column', and one product not
    photographed yet stopped the whole import."""
    shutil.copy2(SAMPLES / "red-apple.jpg", tmp_path / "a.jpg")
    catalog = tmp_path / "products.csv"
    catalog.write_text("Image,SKU\na.jpg,A1\n,B1\n ,C1\n")
    assert columns(catalog) == {"a.jpg": {"SKU": "A1"}}
    assert "2 row(s) without an image left out (the first on line 3)" in caplog.text
    jsonl = tmp_path / "products.jsonl"
    jsonl.write_text('{"IMAGE": "a.jpg", "sku": "A1"}\n{"sku": "B1"}\n')
    assert columns(jsonl) == {"a.jpg": {"sku": "A1"}}
    # Google Merchant Center's feed (tab-separated) names it image_link, Shopify "Image Src".
    # Its prices carry their currency: one to a column, the number is what a range reads.
    shutil.copy2(SAMPLES / "snowman.png", tmp_path / "b.png")
    feed = tmp_path / "feed.txt"
    feed.write_text("id\timage_link\tprice\nA1\ta.jpg\t15.00 USD\nB1\tb.png\t7 USD\n")
    assert columns(feed) == {
        "a.jpg": {"id": "A1", "price": "15.00"},
        "b.png": {"id": "B1", "price": "7"},
    }
    (tmp_path / "shopify.csv").write_text("Handle,Image Src,Variant SKU\napple,a.jpg,A1\n")
    assert columns(tmp_path / "shopify.csv") == {"a.jpg": {"Handle": "apple", "Variant SKU": "A1"}}


def test_catalog_options_without_a_catalog_or_a_known_encoding_are_usage_errors(
    tmp_path: Path,
) -> None:
    catalog = write_shop(tmp_path / "shop", PRODUCTS[:1])
    data = ["--data-dir", str(tmp_path / "data")]
    for bad, said in (
        (["--catalog", str(catalog), "--encoding", "klingon"], "'klingon' is not a text encoding"),
        ([str(tmp_path), "--encoding", "gbk"], "--encoding and --download are about a --catalog"),
        ([str(tmp_path), "--download"], "--encoding and --download are about a --catalog"),
    ):
        result = run_cli("index", *bad, *TINY_ARGS, *data, check=False)
        assert result.returncode == 2 and said in result.stderr, result.stderr


def test_an_image_listed_twice_is_one_result_with_its_first_row(
    tmp_path: Path, encoder: Encoder, caplog: pytest.LogCaptureFixture
) -> None:
    """Variants that share a photo: the second row made two catalog rows of one path, and the
    run ended in SQLite's UNIQUE constraint, this run and every one after it."""
    rows = [PRODUCTS[0], dict(PRODUCTS[0], sku="A2", price="2"), PRODUCTS[1]]
    engine = shop_engine(tmp_path, encoder, rows)
    assert found(engine) == {"A1", "F1"}
    assert "lists 1 image(s) again, each kept with its first row" in caplog.text
    assert "img/red-apple.jpg: lines 2, 3" in caplog.text
