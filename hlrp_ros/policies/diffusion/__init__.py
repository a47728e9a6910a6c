"""Diffusion action experts: LeRobot's Diffusion Policy and its language-conditioned form."""

from hlrp_ros.policies.diffusion.configuration_diffusion import DiffusionConfig
from hlrp_ros.policies.diffusion.modeling_diffusion import DiffusionModel, DiffusionPolicy, DiffusionPrefix
from hlrp_ros.policies.diffusion.processor_diffusion import DiffusionProcessor

__all__ = ["DiffusionConfig", "DiffusionModel", "DiffusionPolicy", "DiffusionPrefix", "DiffusionProcessor"]
