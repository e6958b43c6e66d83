"""Attribution maps for ganlab networks, with a uniform Captum-like API.

Each method is built as ``Method(model, **options)`` and called as ``method.attribute(inputs, target)``:
``inputs`` (N, C, H, W), ``target`` an int, a (N,) class tensor or None for one-output models (a GAN
discriminator). Maps are on the input's H x W grid, on the inputs' device. ``METHODS`` lists them in the
lecture's panel order (Selvaraju et al. 2017, fig. 1), then integrated gradients; ``SmoothGrad`` wraps any
of them. Captum is the tests' reference, never imported here.
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
