"""digits: real MNIST test digits, re-rendered as the files a user would give `predict`, come back
as (nearly) the MNIST images they were made from."""

import gzip
import io

import numpy as np
import pytest
from PIL import Image

from mnist_pipeline.digits import centre_of_mass, load_digit

pytestmark = pytest.mark.unit  # no server, no training: `make test-unit`


@pytest.fixture(scope="module")
def mnist_digits(mnist_mirror):
    """The first two test images of each class (20), as uint8 white-on-black 28x28."""
    images = np.frombuffer(gzip.decompress((mnist_mirror / "t10k-images-idx3-ubyte.gz").read_bytes()),
                           np.uint8, offset=16).reshape(-1, 28, 28)
    labels = np.frombuffer(gzip.decompress((mnist_mirror / "t10k-labels-idx1-ubyte.gz").read_bytes()),
                           np.uint8, offset=8)
    chosen = np.concatenate([np.flatnonzero(labels == d)[:2] for d in range(10)])
    return images[chosen]


def encode(img: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **options)
    return buf.getvalue()


def white_on_black_png(digit: np.ndarray) -> bytes:
    return encode(Image.fromarray(digit), "PNG")


def dark_on_light_photo_jpeg(digit: np.ndarray, offset=(37, 71)) -> bytes:
    """5x upscaled (140 px), inverted, pasted off-centre into a 300x200 white canvas, JPEG."""
    big = Image.fromarray(255 - digit).resize((140, 140), Image.BICUBIC)
    canvas = Image.new("L", (300, 200), 255)
    canvas.paste(big, offset)
    return encode(canvas.convert("RGB"), "JPEG", quality=85)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def best_correlation_within_one_pixel(original: np.ndarray, loaded: np.ndarray) -> float:
    """MNIST places the centre of mass anywhere within half a pixel of (14, 14): a digit whose
    centre sits near a half pixel may legitimately land one pixel over."""
    return max(correlation(original, np.roll(loaded, (dy, dx), (0, 1)))
               for dy in (-1, 0, 1) for dx in (-1, 0, 1))


def assert_centred_like_mnist(image: np.ndarray) -> None:
    cy, cx = centre_of_mass(image)
    assert abs(cy - 14) <= 0.5 + 1e-6 and abs(cx - 14) <= 0.5 + 1e-6, (cy, cx)


def test_a_white_on_black_28px_png_comes_back_as_the_mnist_image(mnist_digits):
    correlations, errors = [], []
    for digit in mnist_digits:
        loaded = load_digit(white_on_black_png(digit))
        assert loaded.shape == (28, 28) and loaded.dtype == np.float32
        assert loaded.min() >= 0.0 and loaded.max() == pytest.approx(1.0)
        assert_centred_like_mnist(loaded)
        original = digit / 255.0
        correlations.append(best_correlation_within_one_pixel(original, loaded))
        errors.append(float(np.abs(original - loaded).mean()))
    assert min(correlations) > 0.98
    assert np.median(errors) < 0.01  # most come back pixel for pixel, bar the faintest edge pixels


def test_a_dark_on_light_upscaled_off_centre_jpeg_comes_back_close_to_the_mnist_image(mnist_digits):
    correlations, errors = [], []
    for digit in mnist_digits:
        loaded = load_digit(dark_on_light_photo_jpeg(digit))
        assert_centred_like_mnist(loaded)
        original = digit / 255.0
        correlations.append(best_correlation_within_one_pixel(original, loaded))
        errors.append(float(np.abs(original - loaded).mean()))
    # Upscaling, JPEG and scaling back blur thin strokes a little; shape and place survive.
    assert np.median(correlations) > 0.96 and min(correlations) > 0.85
    assert np.median(errors) < 0.04


def test_the_same_digit_anywhere_on_the_canvas_gives_the_same_input(mnist_digits):
    digit = mnist_digits[0]
    a = load_digit(dark_on_light_photo_jpeg(digit, offset=(0, 0)))
    b = load_digit(dark_on_light_photo_jpeg(digit, offset=(150, 55)))
    assert correlation(a, b) > 0.98


def test_a_digit_far_smaller_or_larger_than_mnist_is_scaled_to_a_20px_box(mnist_digits):
    digit = Image.fromarray(mnist_digits[3])
    for side in (14, 600):
        loaded = load_digit(encode(digit.resize((side, side), Image.BICUBIC), "PNG"))
        rows, cols = np.flatnonzero(loaded.any(axis=1)), np.flatnonzero(loaded.any(axis=0))
        assert max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1 == 20, side


def test_exif_orientation_is_applied(mnist_digits):
    digit = mnist_digits[6]
    stored_sideways = Image.fromarray(255 - digit).resize((140, 140)).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    with_tag = encode(stored_sideways.convert("RGB"), "JPEG", quality=90, exif=exif)
    without_tag = encode(stored_sideways.convert("RGB"), "JPEG", quality=90)
    original = digit / 255.0
    assert best_correlation_within_one_pixel(original, load_digit(with_tag)) > 0.9
    assert best_correlation_within_one_pixel(original, load_digit(without_tag)) < 0.6  # sideways


def test_transparency_is_flattened_onto_white(mnist_digits):
    digit = mnist_digits[10]
    original = digit / 255.0
    # A black pen stroke on a transparent background (as drawing apps export it).
    black_ink = np.zeros((28, 28, 4), np.uint8)
    black_ink[..., 3] = digit
    assert best_correlation_within_one_pixel(original, load_digit(
        encode(Image.fromarray(black_ink, "RGBA"), "PNG"))) > 0.98
    # A palette image with a transparent index: white digit, transparent background.
    palette = Image.fromarray(np.where(digit > 127, 1, 0).astype(np.uint8), "P")
    palette.putpalette([0, 0, 0, 255, 255, 255] + [0, 0, 0] * 254)
    loaded = load_digit(encode(palette, "PNG", transparency=0))
    assert best_correlation_within_one_pixel(original, loaded) > 0.9


def test_polarity_comes_from_the_background_not_the_mean():
    # A bold black ring on white: more than half the pixels are ink, so the mean is dark.
    rows, cols = np.indices((60, 60))
    radius = np.hypot(rows - 30, cols - 30)
    ring = (radius > 7) & (radius < 28)
    image = np.where(ring, 0, 255).astype(np.uint8)
    assert image.mean() < 127
    loaded = load_digit(encode(Image.fromarray(image), "PNG"))
    assert loaded[14, 14] < 0.1  # the hole is background (black), as in MNIST
    assert loaded[14, 6] > 0.9  # the ring is the digit (white)


def test_faint_noise_does_not_move_or_shrink_the_digit(mnist_digits):
    digit = mnist_digits[4]
    clean = Image.open(io.BytesIO(dark_on_light_photo_jpeg(digit))).convert("L")
    noisy = np.asarray(clean, np.int16).copy()
    specks = np.random.default_rng(0).integers(0, (200, 300), (300, 2))
    noisy[specks[:, 0], specks[:, 1]] -= 30  # faint grey dots all over the paper
    loaded = load_digit(encode(Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)), "PNG"))
    assert correlation(loaded, load_digit(encode(clean, "PNG"))) > 0.98


def test_a_file_that_is_not_an_image_is_one_line_naming_it(tmp_path):
    notes = tmp_path / "digit.png"
    notes.write_text("not a picture\n")
    with pytest.raises(ValueError) as err:
        load_digit(notes)
    assert str(err.value) == f"{notes} is not an image Pillow can read (give a PNG or JPEG)"
    truncated = encode(Image.new("L", (50, 50), 255), "PNG")[:60]
    with pytest.raises(ValueError, match=r"^scan\.png is not an image Pillow can read"):
        load_digit(truncated, name="scan.png")
    with pytest.raises(ValueError, match=r"missing\.png: no such file$"):
        load_digit(tmp_path / "missing.png")


@pytest.mark.parametrize("shade", [0, 255, 128])
def test_a_blank_image_is_one_line_naming_it(tmp_path, shade):
    noise = np.random.default_rng(1).integers(-3, 4, (80, 60))  # sensor noise, no digit
    path = tmp_path / "x.png"
    Image.fromarray(np.clip(shade + noise, 0, 255).astype(np.uint8)).save(path)
    with pytest.raises(ValueError) as err:
        load_digit(path)
    assert str(err.value).startswith(f"{path} is blank: no digit found")
    assert "\n" not in str(err.value)
