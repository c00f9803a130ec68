"""service.imaging.pipeline (+ the real u2netp runtime): equal to rembg's reference output.

Golden files under tests/fixtures/golden were produced by rembg 2.0.86 itself with the same
u2netp file (see tests/fixtures/golden/README.md for the command).
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from protocol.errors import TaskFailure
from protocol.messages import BackgroundSettings, OutputSpec
from service.imaging import pipeline, png
from service.inference.families import FAMILIES
from service.inference.model_input import ModelBatch
from service.inference.runtime import load_runtime
from tests.support import (
    FIXTURES,
    GOLDEN,
    MODEL,
    fixture_bytes,
    open_image,
    photos,
    progressive_jpeg,
)

U2NET = FAMILIES["u2net"]
MAX_PIXELS = 40_000_000


@pytest.fixture(scope="module", params=["onnxruntime", "openvino"])
def model(request):
    """Both CPU runtimes must give rembg's output."""
    return load_runtime(MODEL, request.param, threads=None)


def predict(model, decoded: pipeline.DecodedImage) -> np.ndarray:
    return model.infer_batch(ModelBatch.of([pipeline.preprocess(decoded, U2NET)]))[0]


PLAIN = BackgroundSettings()
PNG = OutputSpec(format="PNG")


def render(
    model, data: bytes, settings: BackgroundSettings = PLAIN, output: OutputSpec = PNG
) -> Image.Image:
    decoded = pipeline.decode_image(data, MAX_PIXELS)
    rendered = pipeline.render(decoded, predict(model, decoded), U2NET, settings, output, 3)
    return open_image(rendered.encoded)


def alpha_of(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGBA"))[..., 3].astype(np.int16)


def test_cutout_alpha_equals_rembgs_reference(model):
    ours = render(model, fixture_bytes("anime-girl-1.jpg"))
    reference = Image.open(FIXTURES / "anime-girl-1.u2netp.png")
    assert ours.mode == "RGBA" and ours.size == reference.size
    difference = np.abs(alpha_of(ours) - alpha_of(reference))
    assert difference.mean() < 0.5  # within 0.5/255 on average (alpha in 0..255 here)
    assert difference.max() <= 2


@pytest.mark.parametrize("name", photos())
def test_every_photos_plain_cutout_has_rembgs_alpha(model, name):
    """Within 0.5/255 on average of rembg 2.0.86's own cutout (golden/NAME.u2netp-alpha.png)."""
    ours = alpha_of(render(model, fixture_bytes(name)))
    reference = np.asarray(Image.open(GOLDEN / f"{name[:-4]}.u2netp-alpha.png"), np.int16)
    assert ours.shape == reference.shape
    assert np.abs(ours - reference).mean() < 0.5


def test_rgb_keeps_source_colours_where_visible_and_is_black_where_transparent(model):
    data = fixture_bytes("anime-girl-1.jpg")
    source = np.asarray(open_image(data).convert("RGB"))
    ours = np.asarray(render(model, data))
    visible = ours[..., 3] > 0
    assert np.array_equal(ours[visible][:, :3], source[visible])
    assert not ours[~visible][:, :3].any()
    assert 0 < visible.mean() < 1


@pytest.mark.parametrize(
    "name,settings",
    [
        ("car-1.post-process.png", BackgroundSettings(post_process_mask=True)),
        ("car-1.only-mask.png", BackgroundSettings(return_only_mask=True)),
        ("car-1.alpha-matting.png", BackgroundSettings(alpha_matting=True)),
        (
            "car-1.alpha-matting-seed.png",
            BackgroundSettings(
                alpha_matting=True,
                post_process_mask=True,
                foreground_threshold=230,
                background_threshold=15,
                erode_size=8,
            ),
        ),
    ],
)
def test_each_setting_equals_rembgs_output(model, name, settings):
    ours = render(model, fixture_bytes("car-1.jpg"), settings)
    golden = Image.open(GOLDEN / name)
    assert ours.size == golden.size
    if settings.return_only_mask:
        assert ours.mode == "L"
        difference = np.abs(np.asarray(ours, np.int16) - np.asarray(golden.convert("L"), np.int16))
    else:
        difference = np.abs(alpha_of(ours) - alpha_of(golden))
    assert difference.mean() <= 1.0, difference.mean()


def test_alpha_matting_foreground_colours_equal_rembgs(model):
    ours = np.asarray(
        render(model, fixture_bytes("car-1.jpg"), BackgroundSettings(alpha_matting=True))
    )
    golden = np.asarray(Image.open(GOLDEN / "car-1.alpha-matting.png").convert("RGBA"))
    visible = (ours[..., 3] > 0) & (golden[..., 3] > 0)
    difference = np.abs(ours[visible][:, :3].astype(np.int16) - golden[visible][:, :3])
    assert difference.mean() <= 1.0


def test_post_processed_mask_is_binary(model):
    alpha = alpha_of(
        render(model, fixture_bytes("car-1.jpg"), BackgroundSettings(post_process_mask=True))
    )
    assert set(np.unique(alpha)) <= {0, 255}


@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (7, 1), (2, 2), (37, 53), (120, 80)])
def test_post_process_opening_equals_scipys_grey_opening_with_rembgs_disk(shape):
    """What rembg's post_process runs (an opening with the radius-1 disk), edges included."""
    from scipy import ndimage

    disk = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=bool)
    rng = np.random.default_rng(sum(shape))
    for mask in (
        rng.integers(0, 256, shape, dtype=np.uint8),
        (rng.random(shape) > 0.5).astype(np.uint8) * 255,
    ):
        expected = ndimage.gaussian_filter(
            ndimage.grey_opening(mask, footprint=disk).astype(np.float64), sigma=2
        )
        assert np.array_equal(
            pipeline.post_process_mask(mask), np.where(expected < 127, 0, 255).astype(np.uint8)
        )


def test_batched_inference_equals_one_image_at_a_time(model):
    images = [
        pipeline.decode_image(fixture_bytes(n), MAX_PIXELS)
        for n in ("car-1.jpg", "anime-girl-1.jpg", "car-1.jpg")
    ]
    inputs = [pipeline.preprocess(d, U2NET) for d in images]
    together = model.infer_batch(ModelBatch.of(inputs))
    for decoded, one, row in zip(images, inputs, together, strict=True):
        alone = model.infer_batch(ModelBatch.of([one]))[0]
        assert np.abs(alone - row).max() < 1e-4
        masks = [
            pipeline.mask_from_prediction(p, decoded.size).astype(np.int16) for p in (alone, row)
        ]
        assert np.abs(masks[0] - masks[1]).max() <= 1


def test_uniform_prediction_gives_an_empty_mask_not_nan():
    mask = pipeline.mask_from_prediction(np.full((320, 320), 0.7, np.float32), (40, 30))
    assert mask.shape == (30, 40) and not mask.any()


def test_alpha_of_a_transparent_source_is_multiplied_like_pillows_composite():
    source = open_image(fixture_bytes("car-1.jpg")).convert("RGBA").resize((64, 48))
    rng = np.random.default_rng(1)
    rgba = np.asarray(source).copy()
    rgba[..., 3] = rng.integers(0, 256, rgba.shape[:2], dtype=np.uint8)
    source = Image.fromarray(rgba, "RGBA")
    mask = rng.integers(0, 256, (48, 64), dtype=np.uint8)
    buffer = io.BytesIO()
    source.save(buffer, "PNG")
    decoded = pipeline.decode_image(buffer.getvalue(), MAX_PIXELS)
    assert decoded.has_alpha
    ours = Image.fromarray(pipeline.cutout(decoded, mask, BackgroundSettings()).pixels)
    rembg_way = Image.composite(
        source, Image.new("RGBA", source.size, 0), Image.fromarray(mask, "L")
    )
    assert np.array_equal(alpha_of(ours), alpha_of(rembg_way))


def test_a_png_named_jpg_with_alpha_decodes_as_rgba():
    decoded = pipeline.decode_image(fixture_bytes("plants-1.jpg"), MAX_PIXELS)
    assert decoded.has_alpha and decoded.size == (987, 1481)


def test_exif_orientation_is_applied():
    source = open_image(fixture_bytes("car-1.jpg"))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    buffer = io.BytesIO()
    source.save(buffer, "JPEG", exif=exif)
    decoded = pipeline.decode_image(buffer.getvalue(), MAX_PIXELS)
    assert decoded.size == (360, 480)


def _png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG that claims a huge size: signature + IHDR + an empty IDAT + IEND."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")


def test_a_huge_image_is_refused_from_its_header():
    pipeline.use_own_pixel_limit()  # as the composition root does: our limit, not Pillow's
    with pytest.raises(TaskFailure) as refused:
        pipeline.decode_image(_png_header_only(10_000, 10_000), MAX_PIXELS, "inputs.image")
    assert refused.value.code == "imageTooLarge" and refused.value.parameter == "inputs.image"


@pytest.mark.parametrize(
    "data",
    [
        b"not an image at all",
        b"\x89PNG\r\n\x1a\n" + b"\x00" * 30,
        fixture_bytes("car-1.jpg")[:2000],
        b"",
    ],
)
def test_undecodable_images_are_invalid_image(data):
    with pytest.raises(TaskFailure) as refused:
        pipeline.decode_image(data, MAX_PIXELS)
    assert refused.value.code == "invalidImage"


def test_jpg_output_is_flattened_onto_the_background_colour():
    cut = np.zeros((2, 4, 4), np.uint8)
    cut[0, 0] = (10, 20, 30, 255)
    flat = pipeline.apply_background(cut, (255, 0, 0, 0), "JPG")
    assert flat.shape == (2, 4, 3)
    assert tuple(flat[0, 0]) == (10, 20, 30) and tuple(flat[1, 3]) == (255, 0, 0)


def test_png_background_colour_is_alpha_composited_and_transparent_default_changes_nothing():
    cut = np.zeros((1, 2, 4), np.uint8)
    cut[0, 0] = (10, 20, 30, 255)
    assert pipeline.apply_background(cut, (255, 255, 255, 0), "PNG") is cut
    opaque = pipeline.apply_background(cut, (0, 128, 0, 255), "WEBP")
    assert tuple(opaque[0, 1]) == (0, 128, 0, 255) and tuple(opaque[0, 0]) == (10, 20, 30, 255)


def test_isnet_preprocessing_divides_by_255_and_centres_on_half():
    image = Image.new("RGB", (50, 50), (255, 0, 51))
    model_input = pipeline.preprocess(pipeline.DecodedImage.from_image(image), FAMILIES["isnet"])
    assert model_input.bands.shape == (3, 1024, 1024) and model_input.bands.dtype == np.uint8
    tensor = model_input.floats()
    assert tensor.shape == (3, 1024, 1024) and tensor.dtype == np.float32
    assert np.allclose(tensor[:, 0, 0], [0.5, -0.5, 0.2 - 0.5], atol=1e-6)


@pytest.mark.parametrize("fmt,mode", [("PNG", "RGBA"), ("WEBP", "RGBA"), ("JPG", "RGB")])
def test_each_output_format_encodes(model, fmt, mode):
    image = render(model, fixture_bytes("car-1.jpg"), output=OutputSpec(format=fmt, quality=80))
    assert image.format == {"JPG": "JPEG"}.get(fmt, fmt) and image.mode == mode
    assert image.size == (480, 360)


@pytest.mark.parametrize("mode,channels", [("L", 1), ("RGB", 3), ("RGBA", 4)])
@pytest.mark.parametrize("level", [0, 1, 3])
def test_our_png_writer_round_trips_exactly(mode, channels, level):
    rng = np.random.default_rng(7)
    shape = (37, 53) if channels == 1 else (37, 53, channels)
    pixels = rng.integers(0, 256, shape, dtype=np.uint8)
    pixels[:10] = 0  # some flat rows too
    decoded = open_image(png.encode(pixels, level))
    assert decoded.format == "PNG" and decoded.mode == mode
    assert np.array_equal(np.asarray(decoded), pixels)


@pytest.mark.parametrize("name", ["anime-girl-1.jpg", "car-1.jpg"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_model_input_is_rembgs_normalize_to_the_bit(name, family):
    """rembg's ``normalize``: Pillow's LANCZOS to the family's size, float64 arithmetic, then
    float32 (the families' own files check this against rembg's code: test_families.py)."""
    spec = FAMILIES[family]
    image = open_image(fixture_bytes(name)).convert("RGB")
    pixels = np.asarray(image.resize((spec.size, spec.size), Image.Resampling.LANCZOS), np.float64)
    scale = max(float(pixels.max()), 1e-6) if spec.divide_by_max else 255.0
    expected = ((pixels / scale - np.asarray(spec.mean)) / np.asarray(spec.std)).astype(np.float32)
    ours = pipeline.preprocess(pipeline.decode_image(fixture_bytes(name), MAX_PIXELS), spec)
    assert np.array_equal(ours.floats(), expected.transpose(2, 0, 1))


@pytest.mark.parametrize("name", ["car-1", "anime-girl-1"])
def test_decontaminate_equals_rembgs(model, name):
    """rembg 2.0.86's remove(decontaminate=True) on the same model file (golden/)."""
    settings = BackgroundSettings(decontaminate=True)
    ours = np.asarray(render(model, fixture_bytes(f"{name}.jpg"), settings).convert("RGBA"))
    golden = np.asarray(Image.open(GOLDEN / f"{name}.decontaminated.png").convert("RGBA"))
    ours, golden = ours.astype(np.int16), golden.astype(np.int16)
    assert np.abs(ours[..., 3] - golden[..., 3]).mean() < 0.5
    visible = golden[..., 3] > 0
    assert np.abs(ours[visible][:, :3] - golden[visible][:, :3]).mean() <= 1.0
    # and it is not the plain cutout: the soft edges' colours changed
    plain = np.asarray(render(model, fixture_bytes(f"{name}.jpg")).convert("RGBA"))
    soft = (golden[..., 3] > 0) & (golden[..., 3] < 255)
    assert np.abs(plain[soft][:, :3].astype(np.int16) - ours[soft][:, :3]).mean() > 1.0


def test_decontaminate_recovers_the_foreground_colour_under_a_known_soft_edge():
    """A known subject composited over a sky-blue background with a known soft alpha, and that
    alpha as the mask: the plain cutout keeps the sky's colour in the soft edge (the halo),
    the decontaminated one recovers the subject's."""
    height, width = 160, 200
    rows, columns = np.mgrid[0:height, 0:width]
    # A warm subject with a gentle gradient, an ellipse whose edge ramps over ~12 pixels.
    foreground = np.stack(
        [200 + 40 * columns / width, 90 + 30 * rows / height, np.full((height, width), 40.0)],
        axis=-1,
    )
    background = np.array([110.0, 170.0, 235.0])
    distance = np.hypot((columns - 100) / 70, (rows - 80) / 55)
    alpha = np.clip((1.15 - distance) / 0.2, 0, 1)
    composite = alpha[..., None] * foreground + (1 - alpha[..., None]) * background
    buffer = io.BytesIO()
    Image.fromarray(np.round(composite).astype(np.uint8)).save(buffer, "PNG")
    decoded = pipeline.decode_image(buffer.getvalue(), MAX_PIXELS)
    mask = np.round(alpha * 255).astype(np.uint8)

    soft = (mask > 25) & (mask < 230)
    assert soft.sum() > 1000

    def colour_error(settings: BackgroundSettings) -> float:
        rgb = pipeline.cutout(decoded, mask, settings).pixels[..., :3].astype(np.float64)
        return float(np.abs(rgb[soft] - foreground[soft]).mean())

    plain, cleaned = colour_error(PLAIN), colour_error(BackgroundSettings(decontaminate=True))
    assert plain > 20  # the halo is there to remove
    assert cleaned <= plain / 3


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "JPG"])
def test_decontaminate_composes_with_a_background_colour_and_every_format(model, fmt):
    blue = (0, 0, 255, 255)
    output = OutputSpec(format=fmt, quality=95)
    cleaned = render(
        model, fixture_bytes("car-1.jpg"), BackgroundSettings(rgba=blue, decontaminate=True), output
    )
    plain = render(model, fixture_bytes("car-1.jpg"), BackgroundSettings(rgba=blue), output)
    assert cleaned.size == (480, 360) and cleaned.mode == plain.mode
    cleaned_rgb = np.asarray(cleaned.convert("RGB"), np.int16)
    assert np.abs(cleaned_rgb[5, 5] - [0, 0, 255]).max() <= 8  # the background is there
    assert np.abs(cleaned_rgb - np.asarray(plain.convert("RGB"), np.int16)).mean() > 0.1


def test_a_jpeg_with_thousands_of_scans_is_refused_before_decoding():
    """A 4000x4000 one of 180 KiB took 36 s to decode on EPYC-4; refused from its markers."""
    bomb = progressive_jpeg(4000, 3000)
    with pytest.raises(TaskFailure) as refused:
        pipeline.decode_image(bomb, 40_000_000, "inputImage")
    assert refused.value.code == "invalidImage" and refused.value.parameter == "inputImage"
    assert "3010 scans" in refused.value.message
    ordinary = pipeline.decode_image(progressive_jpeg(64, 0), 40_000_000)
    assert ordinary.size == (64, 64)


def test_a_decode_past_its_cpu_deadline_is_given_up():
    """A 3000x3000 progressive JPEG of noise: megabytes of scans, decoded block by block."""
    buffer = io.BytesIO()
    Image.effect_noise((3000, 3000), 80).convert("RGB").save(buffer, "JPEG", progressive=True)
    costly = buffer.getvalue()
    with pytest.raises(TaskFailure) as refused:
        pipeline.decode_image(costly, 40_000_000, "inputImage", max_seconds=0.01)
    assert refused.value.code == "invalidImage" and refused.value.parameter == "inputImage"
    assert "--decode-timeout" in refused.value.message
    assert pipeline.decode_image(costly, 40_000_000, max_seconds=30).size == (3000, 3000)


# --------------------------------------------------------------------------- PNG colour types


def _png(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", **options)
    return buffer.getvalue()


def _decoded(data: bytes) -> pipeline.DecodedImage:
    return pipeline.decode_image(data, 40_000_000)


def _photo() -> Image.Image:
    return open_image(fixture_bytes("car-1.jpg")).convert("RGB").resize((120, 90))


def _same(a: pipeline.DecodedImage, b: pipeline.DecodedImage) -> None:
    assert a.has_alpha == b.has_alpha
    if a.has_alpha:
        np.testing.assert_array_equal(a.bands(), b.bands())
    else:  # the X byte of RGBX carries nothing
        np.testing.assert_array_equal(a.bands()[..., :3], b.bands()[..., :3])


def test_each_png_colour_type_decodes_as_its_rgb_or_rgba_equivalent():
    photo = _photo()
    grey = photo.convert("L")
    with_alpha = photo.copy()
    with_alpha.putalpha(Image.linear_gradient("L").resize(photo.size))
    palette = photo.quantize(16)
    cases = {
        "greyscale": (grey, grey.convert("RGB")),
        "grey+alpha": (with_alpha.convert("LA"), with_alpha.convert("LA").convert("RGBA")),
        "RGB": (photo, photo),
        "RGBA": (with_alpha, with_alpha),
        "palette": (palette, palette.convert("RGB")),
    }
    for name, (source, equivalent) in cases.items():
        _same(_decoded(_png(source)), _decoded(_png(equivalent)))
        assert _decoded(_png(source)).has_alpha == (equivalent.mode == "RGBA"), name


def _keyed(image: Image.Image, key) -> Image.Image:
    """``image`` as RGBA with alpha 0 where its pixel equals the colour key."""
    rgba = image.convert("RGBA")
    pixels = np.asarray(rgba).copy()
    source = np.asarray(image)
    hit = source == key if source.ndim == 2 else np.all(source == key, axis=-1)
    pixels[hit, 3] = 0
    return Image.fromarray(pixels, "RGBA")


def test_a_trns_colour_key_is_alpha_as_in_the_rgba_file():
    """RGB and greyscale PNGs with tRNS lost it: every transparent pixel came back visible."""
    photo = _photo()
    key = photo.getpixel((10, 10))
    rgb = _decoded(_png(photo, transparency=key))
    assert rgb.has_alpha and (rgb.bands()[..., 3] == 0).any()
    _same(rgb, _decoded(_png(_keyed(photo, key))))
    grey = photo.convert("L")
    level = grey.getpixel((10, 10))
    _same(_decoded(_png(grey, transparency=level)), _decoded(_png(_keyed(grey, level))))
    palette = photo.quantize(16)
    keyed_palette = _decoded(_png(palette, transparency=palette.getpixel((10, 10))))
    assert keyed_palette.has_alpha and keyed_palette.bands()[10, 10, 3] == 0


def test_16_bit_greyscale_is_scaled_not_clipped():
    """A 16-bit greyscale PNG decoded to almost all white (values clipped at 255); it decodes as
    the 8-bit image it was made from, and its 16-bit tRNS level is alpha."""
    grey = _photo().convert("L")
    levels = np.asarray(grey).astype(np.uint16) * 257  # 8 -> 16 bits exactly
    wide = Image.fromarray(levels)
    assert wide.mode == "I;16"
    _same(_decoded(_png(wide)), _decoded(_png(grey.convert("RGB"))))
    level = int(levels[10, 10])
    keyed = _decoded(_png(wide, transparency=level))
    _same(keyed, _decoded(_png(_keyed(grey, int(level // 257)))))


def test_an_exif_rotated_jpeg_decodes_upright():
    photo = _photo()
    plain, rotated = io.BytesIO(), io.BytesIO()
    photo.save(plain, "JPEG", quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to view
    photo.save(rotated, "JPEG", quality=95, exif=exif)
    upright = _decoded(rotated.getvalue())
    assert upright.size == (90, 120)
    expected = np.rot90(_decoded(plain.getvalue()).bands()[..., :3], k=-1)
    np.testing.assert_array_equal(upright.bands()[..., :3], expected)
