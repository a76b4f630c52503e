"""LPIPS (Zhang et al. 2018) with the VGG16 trunk from a local torchvision state_dict: the lpips package ships
its learned linear layers but downloads the trunk, which t2i never does. Used by the VQGAN's perceptual loss
and by the seed-diversity metric."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from t2i.errors import T2IError

VGG16_SLICES = [(0, 4), (4, 9), (9, 16), (16, 23), (23, 30)]   # lpips' slice1..slice5 of vgg16.features


def lpips_trunk_state(vgg_state: dict[str, torch.Tensor], path: str) -> dict[str, torch.Tensor]:
    """Rename a torchvision vgg16 state_dict (`features.N.weight`) to lpips' `sliceK.N.weight`."""
    out = {}
    for key, value in vgg_state.items():
        parts = key.split(".")
        if parts[0] != "features" or len(parts) != 3 or not parts[1].isdigit():
            continue                                        # classifier.* is not part of the trunk
        n = int(parts[1])
        for k, (lo, hi) in enumerate(VGG16_SLICES, start=1):
            if lo <= n < hi:
                out[f"slice{k}.{n}.{parts[2]}"] = value
    if not out:
        raise T2IError(f"{path} has no torchvision vgg16 `features.N.*` weights (keys like "
                       f"{sorted(vgg_state)[:3]}); save torchvision.models.vgg16(...).state_dict()")
    return out


def load_lpips(vgg_path: str, device, option: str = "--lpips ") -> nn.Module:
    """A frozen LPIPS(vgg) whose trunk is the user's torchvision vgg16 weights; nothing is downloaded.
    `option` is how the user gave the path, for messages ("--perceptual lpips:", "--lpips ")."""
    try:
        import lpips
    except ImportError:
        raise T2IError(f"{option}... needs the lpips package (its linear layers ship inside it): "
                       "pip install lpips; or leave the option out") from None
    if not Path(vgg_path).is_file():
        raise T2IError(f"{option}{vgg_path}: no such file; give a torchvision vgg16 state_dict "
                       "saved with torch.save(torchvision.models.vgg16(weights=...).state_dict(), path)")
    try:
        state = torch.load(vgg_path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
        raise T2IError(f"{vgg_path} cannot be read as a tensor state_dict ({type(e).__name__}); "
                       "save a plain torchvision vgg16 state_dict") from None
    if not isinstance(state, dict):
        raise T2IError(f"{vgg_path} holds a {type(state).__name__}, not a vgg16 state_dict")
    # pnet_rand: build the trunk without pretrained weights (no download), then load the user's.
    with warnings.catch_warnings():   # lpips still passes torchvision's deprecated `pretrained=False`
        warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")
        model = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False)
    model.net.load_state_dict(lpips_trunk_state(state, vgg_path), strict=True)
    return model.to(device).eval().requires_grad_(False)
