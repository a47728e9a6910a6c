"""Image conversion (hlrp_ros.ros_image): every raw encoding, row padding, compressed, errors, cv_bridge parity."""

from __future__ import annotations

import numpy as np
import pytest

from hlrp_ros.ros_image import (
    ImageConverter,
    ImageError,
    compressed_to_rgb,
    raw_to_rgb,
    rgb_to_compressed_msg,
    rgb_to_image_msg,
)

pytestmark = pytest.mark.ros


@pytest.fixture
def rgb() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(7, 5, 3), dtype=np.uint8)


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8"])
@pytest.mark.parametrize("padding", [0, 3])
def test_color_encodings_round_trip(rgb, encoding, padding):
    msg = rgb_to_image_msg(rgb, encoding, row_padding=padding)
    out = raw_to_rgb(msg)
    assert out.shape == (7, 5, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, rgb)


def test_mono8_broadcasts_gray(rgb):
    import cv2

    msg = rgb_to_image_msg(rgb, "mono8", row_padding=1)
    out = raw_to_rgb(msg)
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    assert out.shape == (7, 5, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], gray)


def test_raw_conversion_is_zero_copy(rgb):
    msg = rgb_to_image_msg(rgb, "bgr8", row_padding=2)
    out = raw_to_rgb(msg)
    assert np.shares_memory(out, np.frombuffer(msg.data, dtype=np.uint8))


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_compressed(rgb, fmt):
    out = compressed_to_rgb(rgb_to_compressed_msg(rgb, fmt))
    assert out.shape == rgb.shape
    if fmt == "png":
        np.testing.assert_array_equal(out, rgb)
    else:
        assert np.abs(out.astype(int) - rgb).mean() < 40


def test_errors(rgb):
    msg = rgb_to_image_msg(rgb)
    msg.encoding = "yuv422"
    with pytest.raises(ImageError, match="unsupported encoding 'yuv422'") as info:
        raw_to_rgb(msg)
    assert info.value.reason == "encoding"
    short = rgb_to_image_msg(rgb)
    short.data = bytes(10)
    with pytest.raises(ImageError, match="data bytes < step"):
        raw_to_rgb(short)
    narrow = rgb_to_image_msg(rgb)
    narrow.step = 4
    with pytest.raises(ImageError, match="step 4 < width"):
        raw_to_rgb(narrow)
    bad = rgb_to_compressed_msg(rgb)
    bad.data = bytes(20)
    with pytest.raises(ImageError, match="cannot decode"):
        compressed_to_rgb(bad)


def test_converter_numpy_backend(rgb):
    conv = ImageConverter("numpy")
    assert conv.backend == "numpy"
    np.testing.assert_array_equal(conv.to_rgb(rgb_to_image_msg(rgb, "bgra8")), rgb)
    np.testing.assert_array_equal(conv.to_rgb(rgb_to_compressed_msg(rgb)), rgb)
    with pytest.raises(ValueError):
        ImageConverter("pil")


def _working_cv_bridge() -> bool:
    return ImageConverter("auto").backend == "cv_bridge"


@pytest.mark.skipif(not _working_cv_bridge(), reason="no working cv_bridge here (a ROS distro provides one); "
                                                     "the fallback is tested above")
@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8", "mono8"])
def test_cv_bridge_and_fallback_agree(rgb, encoding):
    bridge, fallback = ImageConverter("cv_bridge"), ImageConverter("numpy")
    msg = rgb_to_image_msg(rgb, encoding, row_padding=2)
    np.testing.assert_array_equal(bridge.to_rgb(msg), fallback.to_rgb(msg))
    comp = rgb_to_compressed_msg(rgb)
    np.testing.assert_array_equal(bridge.to_rgb(comp), fallback.to_rgb(comp))


def test_auto_backend_falls_back_when_cv_bridge_is_broken_or_absent(rgb):
    conv = ImageConverter("auto")
    assert conv.backend in ("cv_bridge", "numpy")
    np.testing.assert_array_equal(conv.to_rgb(rgb_to_image_msg(rgb, "bgr8")), rgb)
    if conv.backend == "numpy":
        with pytest.raises(RuntimeError, match="cv_bridge requested"):
            ImageConverter("cv_bridge")
