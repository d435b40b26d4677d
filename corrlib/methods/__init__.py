"""Inference adapters: one module per model family, each registering its method names.

Importing this package fills the registry (as ``torchvision.models`` does); a new paper adds its
adapter module here with one import line.
"""

from corrlib.methods.base import (
    CorrespondenceMethod,
    DescriptorMethod,
    FeatureCache,
    available_methods,
    get_method,
    network_input,
    register_method,
    require_checkpoint,
    scale_points,
)
from corrlib.methods.baselines import BackboneMethod, HandcraftedMethod, IdentityMethod
from corrlib.methods.msconv import MSConvMethod, MSFlowMethod
from corrlib.methods.patch import LearnedPatchMethod
from corrlib.methods.rtn import RTNMethod
from corrlib.methods.scnet import ProposalFlowMethod, ProposalMethod, SCNetMethod
from corrlib.methods.sfnet import SFNetMethod
from corrlib.methods.ucn import UCNMethod

__all__ = [
    "BackboneMethod",
    "CorrespondenceMethod",
    "DescriptorMethod",
    "FeatureCache",
    "HandcraftedMethod",
    "IdentityMethod",
    "LearnedPatchMethod",
    "MSConvMethod",
    "MSFlowMethod",
    "ProposalFlowMethod",
    "ProposalMethod",
    "RTNMethod",
    "SCNetMethod",
    "SFNetMethod",
    "UCNMethod",
    "available_methods",
    "get_method",
    "network_input",
    "register_method",
    "require_checkpoint",
    "scale_points",
]
