"""Attribution maps for ganlab networks, with a uniform Captum-like API.

How it works and why: docs/design-notes.md (Module notes).
"""

from __future__ import annotations

from ganlab.explain.cam import CAM, GradCAM, GuidedGradCAM
from ganlab.explain.guided import Deconvnet, GuidedBackprop
from ganlab.explain.integrated import IntegratedGradients
from ganlab.explain.occlusion import Occlusion
from ganlab.explain.smooth import SmoothGrad

METHODS: dict[str, type] = {
    "guided_backprop": GuidedBackprop,  # (N, C, H, W)
    "gradcam": GradCAM,                 # (N, 1, H, W), >= 0
    "guided_gradcam": GuidedGradCAM,    # (N, C, H, W)
    "occlusion": Occlusion,             # (N, 1, H, W), all channels occluded together
    "cam": CAM,                         # (N, 1, H, W), signed; GAP + linear head only
    "deconvnet": Deconvnet,             # (N, C, H, W)
    "integrated_gradients": IntegratedGradients,  # (N, C, H, W), sums to score(x) - score(baseline)
}

__all__ = ["CAM", "GradCAM", "GuidedGradCAM", "GuidedBackprop", "Deconvnet", "Occlusion", "IntegratedGradients",
           "SmoothGrad", "METHODS"]
