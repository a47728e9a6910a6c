"""sensor_msgs/Image and CompressedImage -> RGB uint8 ``(H, W, 3)`` numpy arrays.

Two back ends produce the same result:

* ``cv_bridge`` where the ROS distro provides a working one (``CvBridge.imgmsg_to_cv2`` /
  ``compressed_imgmsg_to_cv2`` with ``desired_encoding="rgb8"``);
* a numpy/OpenCV fallback for environments without it (the pip wheel environment: the
  registry's ``cv-bridge`` is an old port that fails with numpy 2 and ROS 2 messages).
  Raw images become zero-copy views of the message buffer (``rgb8``; ``bgr8``/``bgra8``/
  ``rgba8`` as strided channel views; ``mono8`` broadcast to three channels), honouring row
  padding (``step``); compressed images are decoded with ``cv2.imdecode``.

Views share memory with the message and are read-only: copy before writing into them. Any
other encoding raises ``ImageError`` (reason ``encoding``); a buffer shorter than
``step * height`` or a ``step`` shorter than one row raises ``ImageError`` (reason ``layout``).
"""

from __future__ import annotations

import re

import numpy as np

#: Raw encodings accepted: name -> (channels, channel indices giving R, G, B).
RAW_ENCODINGS: dict[str, tuple[int, tuple[int, ...]]] = {
    "rgb8": (3, (0, 1, 2)),
    "bgr8": (3, (2, 1, 0)),
    "rgba8": (4, (0, 1, 2)),
    "bgra8": (4, (2, 1, 0)),
    "mono8": (1, (0, 0, 0)),
}
BACKENDS = ("auto", "cv_bridge", "numpy")


class ImageError(ValueError):
    """An image that cannot be used.

    Attributes:
        reason: Stable cause (``encoding``, ``layout``, ``decode``).
        key: ``reason`` plus the offending encoding or format (``encoding_16UC1``), so that counts and
            throttled logs of different causes stay apart; anything odd in the name becomes ``other``.
    """

    def __init__(self, reason: str, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.reason = reason
        detail = detail if re.fullmatch(r"[A-Za-z0-9_.;=/ -]{1,32}", detail or "") else ("other" if detail else "")
        self.key = f"{reason}_{detail}" if detail else reason


def is_compressed(msg) -> bool:
    """Whether ``msg`` is a sensor_msgs/CompressedImage (it has ``format``, no ``encoding``)."""
    return hasattr(msg, "format") and not hasattr(msg, "encoding")


def raw_to_rgb(msg) -> np.ndarray:
    """Raw sensor_msgs/Image -> ``(H, W, 3)`` uint8 RGB view of the message buffer (no copy)."""
    encoding = msg.encoding.lower()
    if encoding not in RAW_ENCODINGS:
        raise ImageError("encoding", f"unsupported encoding {msg.encoding!r}; supported: {sorted(RAW_ENCODINGS)}",
                         msg.encoding)
    channels, rgb = RAW_ENCODINGS[encoding]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height < 1 or width < 1:
        raise ImageError("layout", f"empty image {width}x{height}")
    if step < width * channels:
        raise ImageError("layout", f"step {step} < width {width} x {channels} channels")
    buffer = np.frombuffer(msg.data, dtype=np.uint8)
    if buffer.size < step * height:
        raise ImageError("layout", f"{buffer.size} data bytes < step {step} x height {height}")
    # (H, step) rows, padding cut off, then (H, W, C): all views of the message buffer.
    pixels = buffer[: step * height].reshape(height, step)[:, : width * channels].reshape(height, width, channels)
    if channels == 1:
        return np.broadcast_to(pixels, (height, width, 3))
    if rgb == (0, 1, 2):
        return pixels[:, :, :3]
    return pixels[:, :, 2::-1]


def compressed_to_rgb(msg) -> np.ndarray:
    """sensor_msgs/CompressedImage (jpeg, png, ...) -> ``(H, W, 3)`` uint8 RGB (decoded by OpenCV)."""
    import cv2

    data = np.frombuffer(msg.data, dtype=np.uint8)
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if bgr is None:
        raise ImageError("decode", f"cannot decode compressed image (format {msg.format!r}, {data.size} bytes)",
                         msg.format)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _load_cv_bridge():
    """A CvBridge that works on this machine's numpy and messages, or None."""
    try:
        from cv_bridge import CvBridge
        from sensor_msgs.msg import Image

        bridge = CvBridge()
        probe = Image(height=1, width=2, encoding="bgr8", step=6, data=bytes([1, 2, 3, 4, 5, 6]))
        if bridge.imgmsg_to_cv2(probe, desired_encoding="rgb8").tolist() != [[[3, 2, 1], [6, 5, 4]]]:
            return None
        return bridge
    except Exception:  # not installed, or the broken registry port: use the fallback
        return None


class ImageConverter:
    """Converts image messages to RGB arrays with the chosen back end.

    Args:
        backend: ``auto`` (cv_bridge when a working one is importable, else numpy),
            ``cv_bridge`` (required; raises RuntimeError without it) or ``numpy``.
    """

    def __init__(self, backend: str = "auto") -> None:
        if backend not in BACKENDS:
            raise ValueError(f"image backend must be one of {BACKENDS}, got {backend!r}")
        self._bridge = None if backend == "numpy" else _load_cv_bridge()
        if backend == "cv_bridge" and self._bridge is None:
            raise RuntimeError("cv_bridge requested but no working cv_bridge is importable")
        self.backend = "cv_bridge" if self._bridge is not None else "numpy"

    def to_rgb(self, msg) -> np.ndarray:
        """``(H, W, 3)`` uint8 RGB image from an Image or CompressedImage; ImageError when unusable."""
        if is_compressed(msg):
            if self._bridge is None:
                return compressed_to_rgb(msg)
            try:
                return self._bridge.compressed_imgmsg_to_cv2(msg, desired_encoding="rgb8")
            except Exception as exc:
                raise ImageError("decode", f"cannot decode compressed image (format {msg.format!r}): {exc}",
                                 msg.format) from exc
        if self._bridge is None:
            return raw_to_rgb(msg)
        if msg.encoding.lower() not in RAW_ENCODINGS:  # same accepted set on both back ends
            raise ImageError("encoding", f"unsupported encoding {msg.encoding!r}; supported: {sorted(RAW_ENCODINGS)}",
                             msg.encoding)
        try:
            return self._bridge.imgmsg_to_cv2(msg, desired_encoding="rgb8")
        except Exception as exc:
            raise ImageError("layout", f"cv_bridge cannot convert {msg.encoding!r} image: {exc}") from exc


def rgb_to_image_msg(rgb: np.ndarray, encoding: str = "rgb8", row_padding: int = 0):
    """``(H, W, 3)`` uint8 RGB -> sensor_msgs/Image in ``encoding`` (test and demo helper)."""
    import cv2
    from sensor_msgs.msg import Image

    conversions = {"rgb8": None, "bgr8": cv2.COLOR_RGB2BGR, "rgba8": cv2.COLOR_RGB2RGBA,
                   "bgra8": cv2.COLOR_RGB2BGRA, "mono8": cv2.COLOR_RGB2GRAY}
    if encoding not in conversions:
        raise ValueError(f"unsupported encoding {encoding!r}")
    pixels = rgb if conversions[encoding] is None else cv2.cvtColor(rgb, conversions[encoding])
    height, width = pixels.shape[:2]
    row = pixels.reshape(height, -1)
    if row_padding:
        row = np.hstack([row, np.zeros((height, row_padding), dtype=np.uint8)])
    msg = Image(height=height, width=width, encoding=encoding, is_bigendian=0, step=row.shape[1])
    msg.data = np.ascontiguousarray(row).tobytes()
    return msg


def rgb_to_compressed_msg(rgb: np.ndarray, fmt: str = "png"):
    """``(H, W, 3)`` uint8 RGB -> sensor_msgs/CompressedImage (``png`` or ``jpeg``)."""
    import cv2
    from sensor_msgs.msg import CompressedImage

    ok, data = cv2.imencode(".png" if fmt == "png" else ".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"cannot encode {fmt}")
    msg = CompressedImage(format=fmt)
    msg.data = data.tobytes()
    return msg
