"""Top-down RGB camera of the planar-arm world, drawn with OpenCV.

The camera looks straight down on the square of the table given by
``WorldSpec.view_center`` / ``view_half_size``; image x grows with world x and image y
grows toward the base (world y points up in the image). Drawing uses anti-aliased
primitives with sub-pixel coordinates so that small images (64 x 64, the model's input
size) still show the arm pose smoothly.
"""

from __future__ import annotations

import cv2
import numpy as np

from hlrp_ros.sim.world import COLOUR_RGB, World, forward_kinematics

TABLE_RGB = (196, 186, 164)
ARM_RGB = (60, 60, 70)
EE_RGB = (255, 255, 255)
_SHIFT = 4  # sub-pixel bits for cv2 drawing
_ONE = 1 << _SHIFT


class Camera:
    """Maps world metres to pixels for an image of ``width`` x ``height``."""

    def __init__(self, world_spec, width: int = 64, height: int = 64) -> None:
        self.spec = world_spec
        self.width, self.height = int(width), int(height)
        size = 2.0 * world_spec.view_half_size
        self.scale = min(self.width, self.height) / size  # pixels per metre
        self.cx, self.cy = world_spec.view_center

    def to_pixel(self, p: np.ndarray) -> np.ndarray:
        """(..., 2) metres -> (..., 2) float pixel coordinates (x right, y down)."""
        p = np.asarray(p, float)
        u = (p[..., 0] - self.cx) * self.scale + self.width / 2.0
        v = -(p[..., 1] - self.cy) * self.scale + self.height / 2.0
        return np.stack([u, v], axis=-1)

    def _fixed(self, p: np.ndarray) -> tuple[int, int]:
        uv = self.to_pixel(p) - 0.5  # pixel centres at integer + 0.5
        return int(round(uv[0] * _ONE)), int(round(uv[1] * _ONE))

    def _radius(self, metres: float) -> int:
        return max(1, int(round(metres * self.scale * _ONE)))

    def render(self, world: World) -> np.ndarray:
        """The camera image: (height, width, 3) uint8 RGB."""
        img = np.empty((self.height, self.width, 3), np.uint8)
        img[:] = TABLE_RGB
        for target in world.targets:
            cv2.circle(img, self._fixed(target.position), self._radius(self.spec.target_size),
                       COLOUR_RGB[target.colour], -1, cv2.LINE_AA, _SHIFT)
        points = forward_kinematics(world.spec.arm, world.q)
        thickness = max(1, int(round(0.05 * self.scale)))
        for a, b in zip(points[:-1], points[1:]):
            cv2.line(img, self._fixed(a), self._fixed(b), ARM_RGB, thickness, cv2.LINE_AA, _SHIFT)
        for joint in points[:-1]:
            cv2.circle(img, self._fixed(joint), self._radius(0.04), ARM_RGB, -1, cv2.LINE_AA, _SHIFT)
        cv2.circle(img, self._fixed(points[-1]), self._radius(0.045), EE_RGB, -1, cv2.LINE_AA, _SHIFT)
        return img


def render(world: World, width: int = 64, height: int = 64) -> np.ndarray:
    """Convenience: one top-down image of ``world`` (height, width, 3) uint8 RGB."""
    return Camera(world.spec, width, height).render(world)
