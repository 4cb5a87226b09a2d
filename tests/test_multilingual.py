"""Multilingual models offline: a tiny XLM-R text tower built here (tests/multilingual.py),
loaded back from a checkpoint file, indexing images and answering Chinese queries from the
command line and the JSON API."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import requests
import torch

from search import text
from search.errors import ModelError
from search.languages import language_code
from search.model import Encoder
from search.spec import ModelSpec
from tests.conftest import TINY_ARGS, run_cli, serving
from tests.multilingual import Tiny, build, model_config, nllb_config

pytest.importorskip("transformers")

QUERIES = ["海边的日落", "一只猫坐在草地上", "a red apple"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    return build(tmp_path_factory.mktemp("multilingual"))


@pytest.fixture(scope="module")
def encoder(tiny: Tiny) -> Encoder:
    return Encoder(ModelSpec.from_args(str(tiny.config), str(tiny.checkpoint)), "cpu")


@pytest.fixture(scope="module")
def nllb(tmp_path_factory: pytest.TempPathFactory) -> Encoder:
    config = nllb_config(tmp_path_factory.mktemp("nllb"))
    return Encoder(ModelSpec.from_args(str(config), "none"), "cpu")


def test_the_spec_says_multilingual(tiny: Tiny, tiny_spec: ModelSpec) -> None:
    assert ModelSpec.from_args(str(tiny.config), "none").multilingual
    assert ModelSpec.from_args("xlm-roberta-base-ViT-B-32", "none").multilingual
    assert ModelSpec.from_args("nllb-clip-base-siglip", "none").multilingual
    assert not ModelSpec.from_args("roberta-ViT-B-32", "none").multilingual
    assert not tiny_spec.multilingual


def test_the_checkpoint_gives_the_random_model_back(tiny: Tiny) -> None:
    random = Encoder(ModelSpec.from_args(str(tiny.config), "none"), "cpu", exact=True)
    loaded = Encoder(ModelSpec.from_args(str(tiny.config), str(tiny.checkpoint)), "cpu", True)
    assert np.array_equal(random.encode_texts(QUERIES), loaded.encode_texts(QUERIES))


@pytest.mark.parametrize("tower", ["encoder", "nllb"])
def test_cut_text_encoding_equals_the_padded_forward(
    tower: str, request: pytest.FixtureRequest
) -> None:
    """The Hugging Face towers mask padding: cutting a batch after its longest query is exact."""
    encoder = request.getfixturevalue(tower)
    tokens = encoder.tokenizer(QUERIES)
    assert tokens.shape[1] > 12 and (tokens[:, 12:] == 1).all()  # mostly padding
    with torch.inference_mode():
        model = encoder.model.float()
        padded = model.encode_text(tokens)
        cut = text.encode_text(model, tokens)
        model.to(encoder.dtype)
    np.testing.assert_allclose(cut.numpy(), padded.numpy(), atol=1e-5)


def test_a_chinese_query_embeds_the_same_in_another_process(tiny: Tiny, encoder: Encoder) -> None:
    script = (
        "import json, sys; from search.model import Encoder; from search.spec import ModelSpec;"
        "e = Encoder(ModelSpec.from_args(sys.argv[1], sys.argv[2]), 'cpu');"
        "print(json.dumps(e.encode_texts([sys.argv[3]])[0].tolist()))"
    )
    command = [sys.executable, "-c", script, str(tiny.config), str(tiny.checkpoint), QUERIES[0]]
    there = json.loads(subprocess.run(command, capture_output=True, check=True).stdout)
    assert np.array_equal(np.array(there, np.float32), encoder.encode_texts(QUERIES[:1])[0])


def test_index_and_search_in_chinese(tiny: Tiny, tmp_path: Path, photos: Path) -> None:
    data = ["--data-dir", str(tmp_path / "data")]
    run_cli("index", str(photos), *tiny.args, *data, "-q")
    found = json.loads(run_cli("search", QUERIES[0], "-k", "3", *data, "--json").stdout)
    assert found["count"] == 3 and found["model"].startswith("tiny-xlmr/checkpoint-")
    assert found["notice"] is None  # a multilingual model reads the Chinese query
    itself = found["results"][0]["id"]
    like = run_cli("search", "--like", str(itself), "--include-query", *data, "--json").stdout
    assert json.loads(like)["results"][0]["score"] >= 0.99
    stats = json.loads(run_cli("stats", "--json", *data).stdout)
    assert stats["multilingual"] is True and stats["images"] == 12

    with serving(tmp_path / "data") as (base, _):
        answer = requests.get(f"{base}/api/search", params={"q": "猫 + 2:草地 - 狗", "k": 4})
        assert answer.status_code == 200, answer.text
        assert answer.json()["count"] == 4
        assert requests.get(f"{base}/api/stats").json()["multilingual"] is True


def test_eval_takes_chinese_captions(tiny: Tiny, tmp_path: Path, photos: Path) -> None:
    captions = tmp_path / "captions.csv"
    rows = ["red-apple.jpg,红色的苹果", "snowman.png,雪地里的雪人", "checkerboard.png,黑白棋盘"]
    captions.write_text("image,caption\n" + "\n".join(rows) + "\n", encoding="utf-8-sig")
    args = ["--images", str(photos), "--captions", str(captions), *tiny.args]
    result = run_cli("eval", *args, "--data-dir", str(tmp_path / "data"), "--json", "-q")
    figures = json.loads(result.stdout)
    assert (figures["images"], figures["captions"]) == (12, 3)  # the BOM is no header
    assert 0 <= figures["recall@1"] <= figures["recall@10"] <= 1 and figures["median_rank"] >= 1


def test_an_english_collection_refuses_the_multilingual_model(
    tiny: Tiny, tmp_path: Path, photos: Path
) -> None:
    data = ["--data-dir", str(tmp_path / "data")]
    run_cli("index", str(photos), *TINY_ARGS, *data, "-q")
    refused = run_cli("index", str(photos), *tiny.args, *data, check=False)
    assert refused.returncode == 1 and "will not mix" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_text_model_folder_replaces_the_hub_name(
    tiny: Tiny, encoder: Encoder, tmp_path: Path
) -> None:
    """A config naming a hub model works offline from a local folder given with --text-model;
    without it, one line says what to do."""
    hub = model_config(tmp_path / "hub-named.json", "xlm-roberta-base")
    spec = ModelSpec.from_args(str(hub), str(tiny.checkpoint), str(tiny.folder))
    assert spec.multilingual and spec.text_model == str(tiny.folder)
    same = Encoder(spec, "cpu").encode_texts(QUERIES)
    assert np.array_equal(same, encoder.encode_texts(QUERIES))
    with pytest.raises(ModelError, match="--text-model FOLDER"):
        Encoder(ModelSpec.from_args(str(hub), str(tiny.checkpoint)), "cpu")


@pytest.mark.parametrize(
    ("missing", "says"),
    [("config.json", "has no config.json"), ("tokenizer.json", "has no tokenizer")],
)
def test_a_text_model_folder_missing_a_file_is_one_line(
    tiny: Tiny, tmp_path: Path, photos: Path, missing: str, says: str
) -> None:
    folder = copy_folder(tiny.folder, tmp_path / "incomplete", leave_out=missing)
    hub = model_config(tmp_path / "hub-named.json", "xlm-roberta-base")
    args = ["--model", str(hub), "--pretrained", str(tiny.checkpoint), "--text-model", str(folder)]
    failed = run_cli("index", str(photos), *args, "--data-dir", str(tmp_path / "d"), check=False)
    assert failed.returncode == 1 and says in failed.stderr
    assert len(failed.stderr.strip().splitlines()) == 1, failed.stderr


def test_a_moved_or_changed_text_model_folder_is_one_line(
    tiny: Tiny, tmp_path: Path, photos: Path
) -> None:
    folder = copy_folder(tiny.folder, tmp_path / "text")
    hub = model_config(tmp_path / "hub-named.json", "xlm-roberta-base")
    data = ["--data-dir", str(tmp_path / "d")]
    args = ["--model", str(hub), "--pretrained", str(tiny.checkpoint), "--text-model", str(folder)]
    run_cli("index", str(photos), *args, *data, "-q")
    (folder / "config.json").write_text((folder / "config.json").read_text().replace("32", "33"))
    changed = run_cli("search", "猫", *data, check=False)
    assert changed.returncode == 1 and "changed since the collection was built" in changed.stderr
    folder.rename(tmp_path / "elsewhere")
    moved = run_cli("search", "猫", *data, check=False)
    assert moved.returncode == 1 and "is missing: put it back" in moved.stderr
    assert len(moved.stderr.strip().splitlines()) == 1, moved.stderr


def copy_folder(source: Path, target: Path, leave_out: str = "") -> Path:
    target.mkdir()
    for file in source.iterdir():
        if file.name != leave_out:
            (target / file.name).write_bytes(file.read_bytes())
    return target


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("海边的日落", "zho_Hans"),
        ("猫 + 2:草地 - dog", "zho_Hans"),
        ("東京タワーの夜景", "jpn_Jpan"),  # kanji and kana: Japanese
        ("서울의 밤", "kor_Hang"),
        ("Москва зимой", "rus_Cyrl"),
        ("a dog on the beach", "eng_Latn"),
        ("plage au coucher du soleil", "eng_Latn"),
    ],
)
def test_a_query_gets_the_language_of_its_script(query: str, code: str) -> None:
    assert language_code(query) == code


def test_nllb_marks_each_query_with_its_own_language(nllb: Encoder) -> None:
    """One batch, two languages: each text starts with its own code, and the code changes the
    embedding (left as English, as NLLB's tokenizer would, a Chinese query embeds otherwise)."""
    hf = nllb.tokenizer.tokenizer.tokenizer  # ours, then open_clip's, then Hugging Face's
    codes = [hf.convert_tokens_to_ids(code) for code in ("zho_Hans", "eng_Latn", "zho_Hans")]
    tokens = nllb.tokenizer(["海边的日落", "a dog on the beach", "雪人"])
    assert tokens[:, 0].tolist() == codes
    hf.src_lang = "eng_Latn"
    as_english = nllb.tokenizer.tokenizer(["海边的日落"])
    assert as_english[0, 0] == codes[1] and (as_english[0, 1:] == tokens[0, 1:]).all()
    with torch.inference_mode():
        english = nllb.model.encode_text(as_english).float()
    chinese = nllb.encode_texts(["海边的日落"])[0]
    assert float(chinese @ torch.nn.functional.normalize(english, dim=-1)[0].numpy()) < 0.999
