"""PI-style joint expert: PI0 and PI0.5 (PaliGemma prefix + Gemma action expert, flow matching)."""

from hlrp_ros.policies.pi0.configuration_pi0 import PI0Config
from hlrp_ros.policies.pi0.modeling_pi0 import PI0FlowMatching, PI0Policy, PI0Prefix
from hlrp_ros.policies.pi0.presets import PRESETS, make_config
from hlrp_ros.policies.pi0.processor_pi0 import PI0Processor

__all__ = ["PRESETS", "PI0Config", "PI0FlowMatching", "PI0Policy", "PI0Prefix", "PI0Processor", "make_config"]
