"""load_image: every PIL mode to 8-bit RGB, and a clear error naming the file for every bad file."""

import numpy as np
import pytest
from PIL import Image

from mmseq.data import images
from mmseq.data.images import load_image
from mmseq.errors import InputError


def pixel(image, xy=(0, 0)):
    assert image.mode == "RGB"
    return image.getpixel(xy)


def saved(tmp_path, image, name, **kwargs):
    path = tmp_path / name
    image.save(path, **kwargs)
    return path


def test_rgb_passes_through_unchanged(tmp_path):
    array = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    path = saved(tmp_path, Image.fromarray(array), "rgb.png")
    loaded = load_image(path)
    assert loaded.size == (7, 5)
    np.testing.assert_array_equal(np.asarray(loaded), array)


def test_grayscale_and_one_bit_repeat_over_channels(tmp_path):
    assert pixel(load_image(saved(tmp_path, Image.new("L", (4, 4), 77), "gray.png"))) == (77, 77, 77)
    one_bit = Image.new("1", (4, 4), 0)
    one_bit.putpixel((1, 1), 1)
    loaded = load_image(saved(tmp_path, one_bit, "bit.png"))
    assert pixel(loaded) == (0, 0, 0) and pixel(loaded, (1, 1)) == (255, 255, 255)


@pytest.mark.parametrize(
    "mode, color",
    [("RGBA", (200, 0, 0, 0)), ("LA", (30, 0))],
)
def test_transparent_pixels_become_white(tmp_path, mode, color):
    image = Image.new(mode, (4, 4), color)
    opaque = (200, 0, 0, 255) if mode == "RGBA" else (30, 255)
    image.putpixel((1, 1), opaque)
    loaded = load_image(saved(tmp_path, image, f"{mode}.png"))
    assert pixel(loaded) == (255, 255, 255)
    assert pixel(loaded, (1, 1)) == ((200, 0, 0) if mode == "RGBA" else (30, 30, 30))


def test_half_transparent_pixel_is_blended_with_white(tmp_path):
    loaded = load_image(Image.new("RGBA", (2, 2), (0, 0, 0, 128)))
    assert all(abs(channel - 127) <= 1 for channel in pixel(loaded))


def test_palette_with_and_without_transparency(tmp_path):
    palette_image = Image.new("P", (4, 4), 1)
    palette_image.putpalette([0, 0, 0, 10, 200, 30] + [0] * (256 * 3 - 6))
    palette_image.putpixel((1, 1), 0)
    assert pixel(load_image(saved(tmp_path, palette_image, "p.png"))) == (10, 200, 30)
    loaded = load_image(saved(tmp_path, palette_image, "p_transparent.png", transparency=0))
    assert pixel(loaded) == (10, 200, 30) and pixel(loaded, (1, 1)) == (255, 255, 255)
    gif = load_image(saved(tmp_path, palette_image, "p.gif", transparency=0))
    assert pixel(gif, (1, 1)) == (255, 255, 255)


def test_cmyk(tmp_path):
    loaded = load_image(saved(tmp_path, Image.new("CMYK", (4, 4), (0, 255, 255, 0)), "cmyk.jpg", quality=100))
    red, green, blue = pixel(loaded)
    assert red > 230 and green < 25 and blue < 25


def test_sixteen_bit_scaled_to_eight(tmp_path):
    sixteen = Image.fromarray(np.array([[0, 65535], [257 * 100, 257 * 200]], dtype=np.uint16))
    assert sixteen.mode.startswith("I;16")
    loaded = load_image(saved(tmp_path, sixteen, "sixteen.png"))
    np.testing.assert_array_equal(np.asarray(loaded)[..., 0], [[0, 255], [100, 200]])
    # PIL opens some 16-bit files as 32-bit 'I'; values above 255 mean a 16-bit range.
    as_int32 = Image.fromarray(np.array([[0, 65535]], dtype=np.int32), "I")
    assert np.asarray(load_image(as_int32))[0, :, 1].tolist() == [0, 255]
    small_int32 = Image.fromarray(np.array([[0, 90]], dtype=np.int32), "I")
    assert np.asarray(load_image(small_int32))[0, :, 1].tolist() == [0, 90]


def test_float_images(tmp_path):
    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), "F")
    assert np.asarray(load_image(saved(tmp_path, unit, "unit.tiff")))[0, :, 0].tolist() == [0, 128, 255]
    wide = Image.fromarray(np.array([[-5.0, 100.0, 300.0, np.nan]], dtype=np.float32), "F")
    assert np.asarray(load_image(wide))[0, :, 2].tolist() == [0, 100, 255, 0]


def test_arrays_and_pil_images_go_through_the_same_conversion():
    array = np.zeros((3, 5, 3), dtype=np.uint8)
    array[..., 1] = 9
    loaded = load_image(array)
    assert loaded.mode == "RGB" and loaded.size == (5, 3) and pixel(loaded) == (0, 9, 0)
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)  # fully transparent
    assert pixel(load_image(rgba)) == (255, 255, 255)
    assert pixel(load_image(Image.new("L", (2, 2), 5))) == (5, 5, 5)
    with pytest.raises(InputError, match="uint8"):
        load_image(np.zeros((2, 2, 3), dtype=np.float32))
    with pytest.raises(InputError, match="uint8"):
        load_image(np.zeros((2, 2, 2), dtype=np.uint8))


def test_missing_folder_and_empty_files_name_the_file(tmp_path):
    with pytest.raises(InputError, match="nowhere.png.*not found"):
        load_image(tmp_path / "nowhere.png")
    with pytest.raises(InputError, match=f"{tmp_path.name}.*folder"):
        load_image(tmp_path)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="empty.jpg.*0 bytes"):
        load_image(empty)


def test_non_image_and_truncated_files_name_the_file(tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("this is not a picture\n")
    with pytest.raises(InputError, match="notes.png"):
        load_image(text)
    array = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    for suffix in ("png", "jpg"):
        whole = saved(tmp_path, Image.fromarray(array), f"whole.{suffix}")
        cut = tmp_path / f"cut.{suffix}"
        cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
        with pytest.raises(InputError, match=f"cut.{suffix}"):
            load_image(cut)


def test_decompression_bombs_are_refused(tmp_path, monkeypatch):
    path = saved(tmp_path, Image.new("L", (60, 50)), "bomb.png")
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 2999)
    with pytest.raises(InputError, match="bomb.png.*decompression bomb"):
        load_image(path)
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 3000)
    assert load_image(path).size == (60, 50)
    # PIL's own check: a warning between its limit and twice it (an error for us too), then an error.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)
    with pytest.raises(InputError, match="bomb.png.*decompression bomb"):
        load_image(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(InputError, match="bomb.png.*decompression bomb"):
        load_image(path)
