"""HLRP action expert: a SmolVLA-style VLM prefix encoder plus a flow-matching action expert."""

from hlrp_ros.policies.hlrp.configuration_hlrp import HLRPConfig
from hlrp_ros.policies.hlrp.modeling_hlrp import HLRPPolicy, PrefixCache, VLAFlowMatching
from hlrp_ros.policies.hlrp.presets import PRESETS, make_config
from hlrp_ros.policies.hlrp.processor_hlrp import HLRPProcessor, TokenizedText, build_tiny_tokenizer

__all__ = [
    "HLRPConfig",
    "HLRPPolicy",
    "HLRPProcessor",
    "PRESETS",
    "PrefixCache",
    "TokenizedText",
    "VLAFlowMatching",
    "build_tiny_tokenizer",
    "make_config",
]
