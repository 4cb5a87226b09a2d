"""The model layer against open_clip itself: same embeddings, same weights, clear failures."""

from __future__ import annotations

import copy
import pickle
import time
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Resize

from search import text
from search.collection import load_encoder
from search.errors import ModelError
from search.imaging import InputLayout, decode, model_input
from search.model import Encoder, default_batch_size
from search.spec import ModelSpec
from tests.conftest import SAMPLES, TINY_CONFIG


@pytest.fixture(scope="module")
def reference() -> tuple[torch.nn.Module, object]:
    """The tiny model built by open_clip directly, with the seed clipsearch uses."""
    open_clip.add_model_config(TINY_CONFIG)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model, _, preprocess = open_clip.create_model_and_transforms("tiny-clip")
    return model.eval(), preprocess


@pytest.fixture(scope="module")
def exact(tiny_spec: ModelSpec) -> Encoder:
    """float32 whatever the CPU: equality with open_clip's float32 reference is tested on it."""
    return Encoder(tiny_spec, "cpu", exact=True)


def reference_embedding(reference: tuple, image: Image.Image) -> np.ndarray:
    model, preprocess = reference
    with torch.no_grad():
        features = model.encode_image(preprocess(image.convert("RGB"))[None])
    return torch.nn.functional.normalize(features, dim=-1)[0].numpy()


def test_image_embedding_matches_open_clip_reference(
    exact: Encoder, encoder: Encoder, reference: tuple
) -> None:
    """Our decode + preprocess + encode equals open_clip's documented recipe, to the resize's
    rounding (model_input); the fast dtype this CPU gets (bf16 with AMX) stays within cosine
    0.999 of it."""
    for name in ("red-apple.jpg", "rainbow.png", "night-sky-moon.png"):
        path = SAMPLES / name
        expected = reference_embedding(reference, Image.open(path))
        ours = exact.encode_images([decode(path.read_bytes()).pixels])[0]
        assert np.dot(ours, expected) > 0.9999, name
        fast = encoder.encode_images([decode(path.read_bytes()).pixels])[0]
        assert np.dot(fast, expected) > 0.999, (name, encoder.dtype)


def test_draft_decoded_large_jpeg_matches_full_decode(
    encoder: Encoder, reference: tuple, tmp_path: Path
) -> None:
    """JPEG draft mode (DCT scaling) must not change what the model sees."""
    for name in ("sunset-over-sea.jpg", "city-skyline-night.jpg", "pine-forest.jpg"):
        big = Image.open(SAMPLES / name).resize((3200, 2400), Image.Resampling.BICUBIC)
        path = tmp_path / name
        big.save(path, quality=90)
        picture = decode(path.read_bytes(), min_side=encoder.layout.min_side)
        assert (picture.width, picture.height) == (3200, 2400)
        assert picture.image.width < 3200  # the draft path was taken
        ours = encoder.encode_images([picture.pixels])[0]
        assert np.dot(ours, reference_embedding(reference, Image.open(path))) >= 0.99, name


def test_text_embeddings_are_normalised_and_distinct(encoder: Encoder) -> None:
    vectors = encoder.encode_texts(["a red apple", "a snowman in winter"])
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.dot(vectors[0], vectors[1]) < 0.9999


def test_random_weights_are_reproducible(tiny_spec: ModelSpec, encoder: Encoder) -> None:
    """`--pretrained none` must give the query process the indexer's model."""
    again = Encoder(tiny_spec, "cpu")
    np.testing.assert_array_equal(again.encode_texts(["a boat"]), encoder.encode_texts(["a boat"]))


def test_local_checkpoint_round_trip(tmp_path: Path, encoder: Encoder) -> None:
    """A saved state dict loaded through --pretrained FILE gives the same embeddings, without
    drawing random weights first; once the file changed, that is the error, not its loading."""
    checkpoint = tmp_path / "tiny.pt"
    torch.save({"state_dict": encoder.model.state_dict()}, checkpoint)
    spec = ModelSpec.from_args(str(TINY_CONFIG), str(checkpoint))
    assert spec.pretrained == "file" and spec.checkpoint_sha256
    random_state = torch.random.get_rng_state()
    loaded = load_encoder(spec, "cpu")
    assert torch.equal(torch.random.get_rng_state(), random_state)
    pixels = decode((SAMPLES / "snowman.png").read_bytes()).pixels
    np.testing.assert_allclose(
        loaded.encode_images([pixels]), encoder.encode_images([pixels]), atol=1e-6
    )
    np.testing.assert_allclose(
        loaded.encode_texts(["snow"]), encoder.encode_texts(["snow"]), atol=1e-6
    )
    checkpoint.write_bytes(b"changed")
    with pytest.raises(ModelError, match="changed since the collection was built"):
        load_encoder(spec, "cpu")


def test_a_checkpoint_missing_a_weight_is_refused(tmp_path: Path, encoder: Encoder) -> None:
    """The strict load that makes skipping the random start safe: no weight is left unset."""
    weights = encoder.model.state_dict()
    del weights["text_projection"]
    torch.save(weights, tmp_path / "partial.pt")
    spec = ModelSpec.from_args(str(TINY_CONFIG), str(tmp_path / "partial.pt"))
    with pytest.raises(ModelError, match=r"Missing key.*text_projection"):
        Encoder(spec, "cpu")


class _RunsCode:
    """A pickle that would create a file when loaded with pickle's full powers."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (Path.touch, (str(self.marker),))


def hostile_checkpoint(kind: str, folder: Path, weights: dict[str, torch.Tensor]) -> Path:
    path = folder / f"{kind}.pt"
    if kind == "garbage":
        path.write_bytes(np.random.default_rng(0).bytes(1000))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "cut short":
        torch.save(weights, path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "other shapes":  # torch says so in a line for each weight
        reshaped = {"text_projection": torch.zeros(3, 3), "ln_final.weight": torch.zeros(3)}
        torch.save({**weights, **reshaped}, path)
    else:  # "runs code"
        path.write_bytes(pickle.dumps(_RunsCode(folder / "ran"), protocol=4))
    return path


@pytest.mark.parametrize("kind", ["garbage", "empty", "cut short", "other shapes", "runs code"])
def test_a_hostile_checkpoint_file_is_refused_in_one_line(
    tmp_path: Path, encoder: Encoder, kind: str
) -> None:
    checkpoint = hostile_checkpoint(kind, tmp_path, encoder.model.state_dict())
    spec = ModelSpec.from_args(str(TINY_CONFIG), str(checkpoint))
    with pytest.raises(ModelError) as refused:
        Encoder(spec, "cpu")
    message = str(refused.value)
    assert message.startswith(f"cannot load checkpoint {checkpoint}")
    assert len(message.splitlines()) == 1 and len(message) < 600, message
    assert not (tmp_path / "ran").exists()


def test_offline_pretrained_tag_fails_fast_with_guidance() -> None:
    spec = ModelSpec.from_args("ViT-B-32", "laion2b_s34b_b79k")
    started = time.monotonic()
    with pytest.raises(ModelError, match="--pretrained FILE"):
        Encoder(spec, "cpu")
    assert time.monotonic() - started < 30


@pytest.mark.parametrize(
    ("model", "pretrained", "message"),
    [
        ("NoSuchNet", "none", "unknown model"),
        ("ViT-B-32", "no-such-tag", "known tags"),
        (str(TINY_CONFIG), "laion2b_s34b_b79k", "config JSON"),
        ("RN50", None, "--pretrained is required"),
    ],
)
def test_bad_model_arguments(model: str, pretrained: str | None, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        ModelSpec.from_args(model, pretrained)


def test_broken_model_config(tmp_path: Path) -> None:
    config = tmp_path / "broken.json"
    config.write_text('{"embed_dim": 8}')
    with pytest.raises(ModelError, match="vision_cfg"):
        ModelSpec.from_args(str(config), "none")


def test_uint8_pixels_normalised_by_the_model_equal_open_clip_preprocessing(
    encoder: Encoder,
) -> None:
    """Workers hand over uint8 pixels at the model's input; converting and normalising them
    on the model's side gives what open_clip's preprocessing gives (to float rounding)."""
    pixels = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    assert np.array_equal(model_input(pixels, encoder.layout), pixels)  # nothing to resize
    ours = encoder.floats(pixels[np.newaxis])[0]
    torch.testing.assert_close(ours, encoder.preprocess(Image.fromarray(pixels)), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("size", "interpolation"),
    [
        ((100, 60), "bicubic"),
        ((60, 100), "bicubic"),
        ((333, 211), "bilinear"),
        ((1000, 999), "bicubic"),
    ],
)
def test_resized_pixels_are_open_clips_to_two_levels(
    size: tuple[int, int], interpolation: str
) -> None:
    """torch's antialiased resize (model_input) against open_clip's, which is Pillow's: the same
    target size and crop, the same filter, weights rounded to 16 rather than 22 bits."""
    layout = InputLayout(64, interpolation=interpolation)
    pil = {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR}
    theirs = Compose([Resize(64, interpolation=pil[interpolation]), CenterCrop(64)])
    photo = Image.open(SAMPLES / "red-apple.jpg").convert("RGB").resize(size)
    ours = model_input(np.array(photo), layout).astype(int)
    expected = np.asarray(theirs(photo)).astype(int)
    assert ours.shape == expected.shape == (64, 64, 3)
    assert np.abs(ours - expected).max() <= 2
    assert np.mean(ours != expected) < 0.02


def test_text_cut_to_the_batch_length_equals_open_clip_on_padded_tokens(exact: Encoder) -> None:
    """The trimmed forward gives open_clip's encode_text embedding over all 77 positions."""
    encoder = exact
    texts = ["a", "a red apple on a wooden table", "!!!", "word " * 40]
    tokens = encoder.tokenizer(texts)
    assert text.trims(encoder.model)
    with torch.inference_mode():
        padded = encoder.model.encode_text(tokens)
        cut = text.encode_text(encoder.model, tokens)
        alone = text.encode_text(encoder.model, tokens[:1])  # "a": 3 positions, not 77
    torch.testing.assert_close(cut, padded, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(alone, padded[:1], atol=1e-5, rtol=1e-4)
    ours = encoder.encode_texts(texts)
    reference = torch.nn.functional.normalize(padded, dim=-1).numpy()
    assert (ours * reference).sum(axis=1).min() > 0.99999


def test_a_text_tower_packed_for_onednn_computes_what_open_clip_does(
    exact: Encoder, encoder: Encoder
) -> None:
    """The CPU encoder's packed weights: the same embeddings, float32 to float32, for batches
    of any size (the packing is tuned for 16 rows)."""
    if not torch.backends.mkldnn.is_available():
        pytest.skip("this torch has no oneDNN")
    packed = copy.deepcopy(exact.model)
    assert text.prepack(packed)
    assert isinstance(encoder.model.transformer.resblocks[0].attn, text._PackedSelfAttention)
    texts = ["a", "a red apple on a wooden table", "!!!", "word " * 40] * 5
    tokens = exact.tokenizer(texts)
    with torch.inference_mode():
        padded = exact.model.encode_text(tokens)
        for rows in (1, 3, 20):
            ours = text.encode_text(packed, tokens[:rows])
            torch.testing.assert_close(ours, padded[:rows], atol=1e-5, rtol=1e-4)


def test_a_cpu_batch_holds_the_pixels_of_32_images_of_224_px(encoder: Encoder) -> None:
    assert default_batch_size("cpu", 224) == 32  # ViT-B-32 slows down with larger batches
    assert default_batch_size("cpu", 336) == 14
    assert default_batch_size("cpu", 64) == 256  # a small model: as many as 256, not 392
    assert default_batch_size("cuda", 64) == default_batch_size("cuda", 336) == 256
    assert encoder.batch_size == default_batch_size(encoder.device.type, encoder.layout.size)
