"""OpenAI / OpenCLIP weights behind t2i's ClipModel interface, loaded offline through open_clip."""

from __future__ import annotations

import contextlib
import difflib
import logging
import os
import zipfile
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F

from t2i.errors import T2IError
from t2i.io import sha256_file

# Keys OpenAI's state dicts carry besides the weights (hyper-parameters stored as tensors); the
# architecture comes from the open_clip config instead, so they are dropped before loading.
_OPENAI_CONFIG_KEYS = ("input_resolution", "context_length", "vocab_size")


def _check_arch(arch: str) -> dict:
    """Return the open_clip config of `arch`, or raise T2IError for archs t2i cannot build offline."""
    if ":" in arch:
        # hf-hub: and local-dir: schemas fetch configs, tokenizers and weights over the network.
        raise T2IError(
            f"open_clip arch {arch!r} uses a schema; t2i loads open_clip models offline from a built-in "
            f"arch name and a local weights file, e.g. 'ViT-B-32:/path/to/open_clip_model.safetensors'."
        )
    config = open_clip.get_model_config(arch)
    if config is None:
        known = open_clip.list_models()
        close = difflib.get_close_matches(arch, known, n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        examples = [m for m in ("ViT-B-32", "ViT-B-32-quickgelu", "ViT-B-16", "ViT-L-14", "RN50") if m in known]
        raise T2IError(
            f"Unknown open_clip arch {arch!r}; {hint}open_clip knows {len(known)} archs, e.g. "
            f"{', '.join(examples)} (all in open_clip.list_models())."
        )
    text_cfg = config.get("text_cfg", {})
    if text_cfg.get("hf_tokenizer_name") or text_cfg.get("hf_model_name") or "siglip" in arch.lower():
        # These towers/tokenizers come from the Hugging Face hub, which t2i never contacts.
        raise T2IError(
            f"open_clip arch {arch!r} needs a Hugging Face text model or tokenizer, which would be "
            f"downloaded; use an arch with open_clip's built-in BPE tokenizer (e.g. ViT-B-32, ViT-L-14)."
        )
    return config


def _is_torchscript(path: Path) -> bool:
    """Whether `path` is a TorchScript archive (a zip with serialized code and constants)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") for name in archive.namelist())


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file or a pickled state dict read with weights_only=True."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except SafetensorError as e:
            raise T2IError(f"{path} is not a readable safetensors file ({e}); re-download it.") from e
    if _is_torchscript(path):
        raise T2IError(
            f"{path} is a TorchScript archive (OpenAI's original JIT .pt), which holds code and is not "
            f"loaded; use a plain state dict instead, e.g. open_clip_pytorch_model.safetensors of "
            f"'timm/vit_base_patch32_clip_224.openai' with arch ViT-B-32-quickgelu."
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError for objects/code, other errors for corrupt files
        raise T2IError(
            f"{path} could not be read as a weights-only state dict ({type(e).__name__}); give a "
            f".safetensors file or a .pt/.bin holding only tensors."
        ) from e
    # open_clip training checkpoints nest the weights next to the optimizer state.
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, dict) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise T2IError(f"{path} does not hold a state dict (a mapping of names to tensors).")
    return checkpoint


def _adapt_state_dict(state_dict: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Map OpenAI / older OpenCLIP key layouts onto `model`'s, as open_clip's own loader does."""
    state_dict = {k: v for k, v in state_dict.items() if k not in _OPENAI_CONFIG_KEYS}
    # DistributedDataParallel checkpoints prefix every key with "module.".
    if all(k.startswith("module.") for k in state_dict):
        state_dict = {k[len("module."):]: v for k, v in state_dict.items()}
    # Checkpoints of CLIP (text tower at the root) loaded into CustomTextCLIP (text tower under .text).
    if "positional_embedding" in state_dict and not hasattr(model, "positional_embedding"):
        state_dict = open_clip.model.convert_to_custom_text_state_dict(state_dict)
    # logit_scale is a 0-d parameter in some releases and a 1-element one in others.
    scale = state_dict.get("logit_scale")
    if scale is not None and scale.numel() == 1:
        state_dict["logit_scale"] = scale.reshape(model.logit_scale.shape)
    return state_dict


@contextlib.contextmanager
def _quiet_random_init_warning():
    """Hide open_clip's "initialized randomly" warning: the weights are loaded right after creation."""

    def drop(record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def _cover_size(h: int, w: int, th: int, tw: int) -> tuple[int, int]:
    """Size covering (th, tw) at the same aspect ratio; the long side truncated as torchvision's Resize does."""
    if th * w >= tw * h:
        return th, max(tw, int(w * th / h))
    return max(th, int(h * tw / w)), tw


class OpenClipModel:
    """An open_clip CLIP (frozen, eval mode) exposing t2i's ClipModel interface."""

    def __init__(self, model: torch.nn.Module, arch: str, tokenizer, identity: str, embed_dim: int):
        self.model = model
        self.arch = arch
        self.tokenizer = tokenizer
        self.identity = identity
        self.embed_dim = embed_dim
        # Tokens a prompt may use, start and end tokens excluded (as t2i's own CLIP counts them).
        self.max_text_tokens = tokenizer.context_length - 2
        preprocess = open_clip.get_model_preprocess_cfg(model)
        size = preprocess["size"]
        self.image_size: tuple[int, int] = (size, size) if isinstance(size, int) else tuple(size)
        device = next(model.parameters()).device
        self.mean = torch.tensor(preprocess["mean"], device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(preprocess["std"], device=device).view(1, 3, 1, 1)

    @property
    def device(self) -> torch.device:
        """Device the weights live on; inputs are moved there."""
        return self.mean.device

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Float [-1, 1] (B, 3, H, W) -> the normalised (B, 3, S, S) input of the vision tower."""
        if images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
            raise T2IError(
                f"encode_image takes float images in [-1, 1] shaped (B, 3, H, W), got {images.dtype} "
                f"{tuple(images.shape)}; convert uint8 images with t2i.data.transforms.to_model."
            )
        x = (images.to(self.device, torch.float32) + 1) / 2
        th, tw = self.image_size
        h, w = x.shape[-2:]
        # open_clip's own pipeline: shortest side to the model size, then a centre crop.
        size = _cover_size(h, w, th, tw)
        if size != (h, w):
            x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)
            # The reference pipeline resizes uint8 PIL images, which cannot overshoot [0, 1] as bicubic does.
            x = x.clamp(0, 1)
        top, left = round((size[0] - th) / 2), round((size[1] - tw) / 2)
        x = x[:, :, top : top + th, left : left + tw]
        return (x - self.mean) / self.std

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """(B, D) unnormalised image embeddings; differentiable w.r.t. `images` (weights are frozen)."""
        return self.model.encode_image(self.preprocess(images))

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """(B, max_text_tokens + 2) token ids; a prompt that does not fit raises T2IError, never is cut."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise T2IError(f"encode_text takes a list of strings, got {type(texts).__name__}: {texts!r:.80}")
        for text in texts:
            # open_clip would silently truncate; count the BPE tokens ourselves first.
            n_tokens = len(self.tokenizer.encode(text))
            if n_tokens > self.max_text_tokens:
                shown = text if len(text) <= 60 else text[:57] + "..."
                raise T2IError(
                    f"Prompt {shown!r} is {n_tokens} tokens; {self.arch}'s text encoder takes at most "
                    f"{self.max_text_tokens}. Shorten the prompt."
                )
        return self.tokenizer(texts).to(self.device)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """(B, D) unnormalised text embeddings."""
        return self.model.encode_text(self.tokenize(texts))


def load_open_clip(
    arch: str, weights_path: str | os.PathLike, device: torch.device | str = "cpu"
) -> OpenClipModel:
    """Build open_clip `arch` and load its weights from a local .safetensors/.pt/.bin; never downloads."""
    config = _check_arch(arch)
    path = Path(weights_path)
    if not path.is_file():
        raise T2IError(
            f"open_clip weights file {path} does not exist. Put the {arch} weights there (a .safetensors "
            f"file such as open_clip_model.safetensors from the model's Hugging Face page, or a .pt/.bin "
            f"state dict); t2i never downloads weights."
        )
    state_dict = _read_state_dict(path)
    try:
        with _quiet_random_init_warning():
            model = open_clip.create_model(arch, pretrained=None, pretrained_text=False, device="cpu")
    except ImportError as e:
        raise T2IError(f"open_clip arch {arch!r} needs a package that is not installed: {e}") from e
    state_dict = _adapt_state_dict(state_dict, model)
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state_dict)), sorted(set(state_dict) - expected)
    # Key names cannot tell OpenAI weights (QuickGELU) from OpenCLIP ones (GELU); only the arch name can,
    # so a wrong choice between ViT-B-32 and ViT-B-32-quickgelu loads without error. Hint at it here.
    hint = "check the arch (OpenAI's ViT-B/32 weights are 'ViT-B-32-quickgelu' in open_clip)"
    if missing or unexpected:
        raise T2IError(
            f"{path} does not hold {arch} weights: {len(missing)} missing keys {missing[:4]}, "
            f"{len(unexpected)} unexpected keys {unexpected[:4]}; {hint}."
        )
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:  # same keys, different shapes: a sibling arch (other width or resolution)
        raise T2IError(f"{path} does not fit {arch}: {str(e)[:400]}; {hint}.") from e
    model = model.to(device).eval().requires_grad_(False)
    identity = f"open_clip:{arch}:{sha256_file(path)[:16]}"
    return OpenClipModel(model, arch, open_clip.get_tokenizer(arch), identity, config["embed_dim"])
