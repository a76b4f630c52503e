"""`t2i train ldm --autoencoder RUN`: latent diffusion (text encoder + UNet, trained jointly) in the shared loop
(one phase, EMA of both).

Images are the KL autoencoder's posteriors cached beside the dataset (`t2i.models.first_stage.cache`); every
step draws a fresh z ~ q(z|x) of each image and multiplies it by the autoencoder's scale factor. Captions are
tokenised by a BPE (test / tiny presets: a `t2i train bpe` run, or one trained here) or by bert-base-uncased's
WordPiece from a local vocab.txt (`--vocab`; needed by paper256); with `--clip RUN` a t2i CLIP's frozen text tower
and its BPE replace the trained encoder. Captions are dropped to the empty caption with
`--null_text_prob` so classifier-free guidance works at sampling. The frozen autoencoder and the tokenizer
travel inside every snapshot, so a run samples on its own.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from t2i.data.loader import require_dataset, step_batches
from t2i.errors import T2IError
from t2i.models.ldm.diffusion import (
    PREDICTIONS,
    DiffusionConfig,
    alphas_cumprod,
    diffusion_loss,
    drop_captions,
)
from t2i.models.ldm.model import PRESETS, LatentDiffusion, LdmConfig
from t2i.models.ldm.text_encoder import pooled_width
from t2i.text.vocab import caption_vocabulary
from t2i.training.loop import Phase, warmup_cosine
from t2i.training.run import grid_picks


@dataclass
class LdmTrainConfig:
    """Options of `t2i train ldm`."""

    data: str = ""
    autoencoder: str = ""        # `t2i train autoencoder` run or snapshot (latents and decoder)
    preset: str = "tiny"
    vocab: str = ""              # bert-base-uncased vocab.txt: WordPiece tokenizer (paper256 needs it)
    clip: str = ""               # `t2i train clip` run or open_clip ARCH:/path: its frozen text tower instead
    bpe: str = ""                # `t2i train bpe` run; empty (and no --vocab) = train one here on the captions
    bpe_vocab: int = 1024        # vocabulary of a BPE trained here
    prediction: str = "eps"      # eps | v
    lr: float = 2e-4             # AdamW
    weight_decay: float = 0.0
    warmup_kimg: float = 1.0     # linear learning-rate warm-up, then cosine decay to 10% at --kimg
    null_text_prob: float = 0.1  # captions replaced by the empty caption (classifier-free guidance)
    min_snr: float = 0.0         # min-SNR-gamma loss weighting (0 = off; 5 is the paper's choice)
    zero_snr: bool = False       # the schedule rescaled to zero terminal SNR (Lin et al. 2024; needs v)
    terminal_weight: float = 1.0  # zero SNR + min-SNR: weight of x_0's error at SNR 0 (0 = Hang et al.'s)
    train_text: bool = True      # train the text encoder with the UNet (0: frozen, e.g. fine-tuning paper256)
    pooled_text: bool = False    # the pooled text state joins the UNet's timestep embedding (as SDXL's)
    grad_checkpointing: bool = False   # recompute UNet / text-encoder activations in backward: less memory
    offload_autoencoder: bool = False  # keep the frozen autoencoder in CPU memory, on the device only to encode/decode


CONFIG = LdmTrainConfig
PRESET_LOOP_DEFAULTS = {
    "test": {"batch": 8, "kimg": 0.032, "tick_kimg": 0.016, "snap": 1, "ema_kimg": 0.01},
    "tiny": {"batch": 32, "kimg": 96.0, "tick_kimg": 3.0, "snap": 10, "ema_kimg": 2.0},   # ~8 s/kimg, bf16, 2 cores
    "paper256": {"batch": 256, "kimg": 100000.0, "tick_kimg": 50.0, "snap": 20, "ema_kimg": 50.0},
}

HELP = {
    "data": "dataset folder or zip (t2i format)",
    "autoencoder": "`t2i train autoencoder` run or snapshot whose latents the UNet learns (and that decodes them)",
    "preset": "network preset: test (for tests), tiny (16x16x4 latents of the tiny autoencoder on a CPU), paper256 "
              "(LDM text2img-large: 320 channels, mult 1,2,4,4, BERT-like encoder 1280-d x 32 layers; needs --vocab or --clip)",
    "vocab": "bert-base-uncased vocab.txt: tokenise with its WordPiece (a local file; paper256 needs it)",
    "clip": "frozen CLIP text tower instead of a trained text encoder: a `t2i train clip` run (its token states "
            "and its BPE), or ARCH:/path/to/weights of an open_clip model (e.g. ViT-L-14:/models/open_clip.safetensors; "
            "its final token states and its own tokenizer, as Stable Diffusion reads them). On small data a CLIP that "
            "binds attributes to objects makes prompts followed far sooner than a jointly trained encoder (shapes: "
            "benchmarks/ldm_shapes.py, benchmarks/clip_binding.py)",
    "bpe": "`t2i train bpe` run (empty and no --vocab: train a BPE on the dataset's captions)",
    "bpe_vocab": "vocabulary size of a BPE trained here",
    "prediction": "what the UNet predicts: eps (LDM) or v (v-prediction)",
    "lr": "AdamW learning rate", "weight_decay": "AdamW weight decay",
    "warmup_kimg": "linear lr warm-up in kimg, then cosine decay to 10%%",
    "null_text_prob": "probability of training on the empty caption (enables --guidance at sampling)",
    "min_snr": "min-SNR-gamma loss weighting, gamma (0 = off, uniform weights)",
    "zero_snr": "rescale the noise schedule to zero terminal SNR (Lin et al. 2024) and sample from the last step "
                "(1/0): the model cannot read colours out of the starting noise; needs --prediction v",
    "terminal_weight": "with --zero_snr 1 and --min_snr G: the weight of x_0's error at the last step (SNR 0), "
                       "each step weighted min(SNR + this, G) / (SNR + 1); 1 keeps the last steps, where layout and "
                       "colours are decided, at full weight, 0 is Hang et al.'s min-SNR, which leaves them untrained "
                       "(shapes: 0.25 drew the shapes best, benchmarks/ldm_shapes.py)",
    "train_text": "train the text encoder jointly with the UNet, as LDM does (1/0); 0 freezes it (fine-tuning "
                  "paper256 on one 24 GB GPU: the 32-layer encoder's gradients and Adam state do not fit beside "
                  "the UNet's)",
    "pooled_text": "add the text encoder's pooled state (its end token's; a CLIP's sentence feature) to the UNet's "
                   "timestep embedding, as SDXL adds its pooled text embedding, beside cross-attention to the token "
                   "states (1/0); CompVis' models have none",
    "grad_checkpointing": "gradient checkpointing of the UNet's blocks and the text encoder's layers (1/0): "
                          "activations are recomputed in the backward pass, trading about a third more compute "
                          "for much less memory",
    "offload_autoencoder": "keep the frozen autoencoder in CPU memory and move it to the device only while it "
                           "encodes the latent cache or decodes the sample grid (1/0)",
}


def add_args(p: argparse.ArgumentParser) -> None:
    """Options of `t2i train ldm`; each shows its default."""
    defaults = LdmTrainConfig()
    choices = {"preset": sorted(PRESETS), "prediction": list(PREDICTIONS)}
    for f in fields(LdmTrainConfig):
        extra = {"choices": choices[f.name]} if f.name in choices else {}
        kind = type(getattr(defaults, f.name))
        p.add_argument(f"--{f.name}", type=(lambda s: bool(int(s))) if kind is bool else kind, default=argparse.SUPPRESS,
                       required=f.name in ("data", "autoencoder"),
                       help=f"{HELP[f.name]} (default {getattr(defaults, f.name)!r})", **extra)


def validate(cfg: LdmTrainConfig) -> None:
    """Reject options that cannot work, before anything heavy runs."""
    if cfg.preset not in PRESETS:
        raise T2IError(f"unknown LDM preset {cfg.preset!r}; choose from {sorted(PRESETS)}")
    if cfg.prediction not in PREDICTIONS:
        raise T2IError(f"--prediction {cfg.prediction!r}: choose from {', '.join(PREDICTIONS)}")
    if not cfg.autoencoder:
        raise T2IError("--autoencoder is required: a `t2i train autoencoder` run or snapshot")
    if cfg.preset == "paper256" and not (cfg.vocab or cfg.clip):
        raise T2IError("--preset paper256 tokenises with bert-base-uncased's WordPiece: give --vocab "
                       "/path/to/vocab.txt")
    if sum(map(bool, (cfg.vocab, cfg.bpe, cfg.clip))) > 1:
        raise T2IError("give one of --vocab (WordPiece), --bpe (a BPE run) or --clip (a frozen CLIP and its BPE)")
    if not 0 <= cfg.null_text_prob < 1:
        raise T2IError(f"--null_text_prob {cfg.null_text_prob} must be in [0, 1)")
    if cfg.min_snr < 0:
        raise T2IError(f"--min_snr {cfg.min_snr} must be >= 0 (0 = off)")
    if not 0 <= cfg.terminal_weight <= 1:
        raise T2IError(f"--terminal_weight {cfg.terminal_weight} must be in [0, 1] (1 = full weight at SNR 0)")
    if cfg.zero_snr and cfg.prediction != "v":
        raise T2IError("--zero_snr 1 needs --prediction v: at zero SNR the last step's x_T holds no image, so its "
                       "noise (eps) is x_T itself and cannot be learned")
    require_dataset(cfg.data, "t2i train ldm")


def describe(cfg: LdmTrainConfig) -> str:
    """Run-directory description, e.g. shapes64-ldm-tiny."""
    return f"{Path(cfg.data.rstrip('/')).stem}-ldm-{cfg.preset}"


def load_autoencoder(cfg: LdmTrainConfig, device, init=None):
    """The frozen KL autoencoder: the resumed snapshot's, else --autoencoder's (a one-line T2IError when it is
    missing or of another family)."""
    from t2i.models.first_stage.autoencoder_kl import KLAutoencoder, KLConfig
    from t2i.models.first_stage.autoencoder_trainer import load_autoencoder_snapshot

    if init is not None:
        ae = KLAutoencoder(KLConfig.from_dict(init.meta["autoencoder"]))
        ae.load_state_dict(init.state_dict("autoencoder"))
        return ae.to(device).eval().requires_grad_(False)
    try:
        return load_autoencoder_snapshot(cfg.autoencoder, device)
    except T2IError as e:
        raise T2IError(f"--autoencoder {cfg.autoencoder}: {e}; train one with `t2i train autoencoder "
                       f"--data {cfg.data}`") from None


def build_tokenizer(cfg: LdmTrainConfig, captions: list[list[str]], init=None, clip=None):
    """The snapshot's tokenizer when resuming, else the --clip's BPE, else WordPiece from --vocab, else the --bpe
    run's, else a BPE trained on the captions."""
    from t2i.models.ldm.text_encoder import LdmTokenizer, OpenClipTokenizer, tokenizer_from_meta

    if init is not None:
        return tokenizer_from_meta(init.meta["tokenizer"])
    if clip is not None:
        return OpenClipTokenizer(clip.arch) if hasattr(clip, "arch") else LdmTokenizer.from_bpe(clip.tokenizer)
    if cfg.vocab:
        return LdmTokenizer.from_wordpiece(cfg.vocab)
    if cfg.bpe:
        from t2i.text.train import load_bpe

        return LdmTokenizer.from_bpe(load_bpe(cfg.bpe))
    from t2i.text.bpe import train_bpe

    return LdmTokenizer.from_bpe(train_bpe((c for caps in captions for c in caps), cfg.bpe_vocab))


class LdmFamily:
    """Modules `ldm` (text encoder + UNet, trained), `ldm_ema` (its EMA, what samples) and `autoencoder` (frozen);
    data = cached posteriors + captions."""

    name = "ldm"

    def __init__(self, cfg: LdmTrainConfig, loop, d, log, init=None):
        from t2i.data.dataset import ImageTextDataset, captions_by_image
        from t2i.models.first_stage.cache import load_or_encode_latents

        self.cfg, self.loop, self.device = cfg, loop, d.device
        dataset = ImageTextDataset(cfg.data)
        dataset.require_captions("t2i train ldm")
        self.autoencoder = load_autoencoder(cfg, "cpu" if cfg.offload_autoencoder else d.device, init)
        R = self.autoencoder.cfg.resolution
        if min(dataset.resolution) < R:
            w, h = dataset.resolution
            raise T2IError(f"dataset {cfg.data!r} is {w}x{h}, smaller than the {R}x{R} images of the autoencoder; "
                           f"images are never enlarged: train an autoencoder on this data (`t2i train autoencoder "
                           f"--data {cfg.data}`) or give data of at least {R}x{R}")
        self.captions = captions_by_image(dataset, "en")
        self.vocab = caption_vocabulary(c for caps in self.captions for c in caps)
        clip = None
        if cfg.clip and init is None:
            from t2i.clip import load_clip

            clip = load_clip(cfg.clip)   # a t2i CLIP run, or ARCH:/path of open_clip weights
        self.tokenizer = build_tokenizer(cfg, self.captions, init, clip)
        with self.autoencoder_on_device():
            self.mean, self.logvar = load_or_encode_latents(dataset, self.autoencoder, 1, d.device, log)  # (N, A, C, h, w)
        self.diffusion = DiffusionConfig(**init.meta["diffusion"]) if init is not None else \
            DiffusionConfig(prediction=cfg.prediction, zero_snr=cfg.zero_snr)
        self.alpha_bar = alphas_cumprod(self.diffusion).to(d.device)
        if init is not None:
            self.net = LdmConfig.from_dict(init.meta["net"])
        else:
            self.net = copy.deepcopy(PRESETS[cfg.preset])
            self.net.text.vocab_size = self.tokenizer.vocab_size
            self.net.unet.latent_channels = self.autoencoder.cfg.latent_channels
            self.net.unet.sample_size = self.autoencoder.cfg.latent_side
            if clip is not None:
                from t2i.models.ldm.text_encoder import from_clip_text, from_open_clip

                self.net.text, clip_text = (from_open_clip if hasattr(clip, "arch") else from_clip_text)(clip)
                self.net.unet.context_dim = self.net.text.width
            if cfg.pooled_text:
                self.net.unet.pooled_dim = pooled_width(self.net.text)
        self.model = LatentDiffusion(self.net).to(d.device)
        if clip is not None:
            self.model.text.load_state_dict(clip_text)
        if self.net.text.frozen or not cfg.train_text:
            self.model.text.requires_grad_(False)
        if cfg.grad_checkpointing:
            self.model.unet.net.enable_gradient_checkpointing()
            if not self.net.text.frozen:   # a frozen tower keeps no activations for backward
                self.model.text.layers.gradient_checkpointing = True
        self.model_ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.modules = {"ldm": self.model, "ldm_ema": self.model_ema, "autoencoder": self.autoencoder}
        self.ema = {"ldm_ema": "ldm"}
        self.grid_prompts = [caps[0] for caps in self.captions[grid_picks(len(self.captions))]][:8]
        n_unet = sum(p.numel() for p in self.model.unet.parameters()) / 1e6
        n_text = sum(p.numel() for p in self.model.text.parameters()) / 1e6
        text = f"frozen CLIP text tower {n_text:.2f}M" if self.net.text.frozen else f"text encoder {n_text:.2f}M"
        side = self.autoencoder.cfg.latent_side
        log(f"LDM {cfg.preset}: UNet {n_unet:.2f}M + {text} parameters; {len(dataset)} images "
            f"as {side}x{side}x{self.autoencoder.cfg.latent_channels} latents (scale factor "
            f"{self.autoencoder.cfg.scale_factor:.4g}); {self.diffusion.prediction}-prediction, text "
            f"{self.net.text.max_len} tokens of {self.tokenizer.vocab_size}")
        log("sample grid prompts (columns): " + " | ".join(self.grid_prompts))

    def phases(self) -> list[Phase]:
        params = [p for p in self.model.parameters() if p.requires_grad]   # no frozen CLIP tower, no --train_text 0
        # One fused kernel for all parameters rather than torch's default per-op (foreach) update: 11% of a tiny-preset
        # step on this CPU (bf16, batch 32: 400 against 353 ms a step on one core).
        opt = torch.optim.AdamW(params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay, fused=True)
        schedule = warmup_cosine(self.cfg.warmup_kimg * 1000, self.loop.kimg * 1000, self.loop.batch)
        return [Phase("main", self.model, opt, lr_scale=schedule)]

    def batches(self, step, batch, rank, world, seed):
        scale = self.autoencoder.cfg.scale_factor

        def fetch(idx, g):
            aug = torch.randint(self.mean.shape[1], (len(idx),), generator=g)
            pick = torch.rand(len(idx), generator=g)
            caps = [self.captions[int(i)][int(p * len(self.captions[int(i)]))] for i, p in zip(idx, pick)]
            mean, logvar = self.mean[idx, aug], self.logvar[idx, aug]
            z = mean + (0.5 * logvar).exp() * torch.randn(mean.shape, generator=g)   # z ~ q(z|x), fresh each step
            return {"latent": z * scale, "caption": drop_captions(caps, self.cfg.null_text_prob, g)}
        return step_batches(len(self.mean), fetch, step, batch, seed, rank)

    def loss(self, phase: Phase, batch: dict):
        self.model.train()
        ids, mask = self.tokenizer(batch["caption"], self.net.text.max_len, truncate=True)
        return diffusion_loss(self.model, batch["latent"].to(self.device), ids.to(self.device), mask.to(self.device),
                              self.diffusion, self.alpha_bar, self.cfg.min_snr, self.cfg.terminal_weight)

    def pipeline(self, module: str = "ldm_ema"):
        """An `LdmPipeline` over the current weights (the EMA's by default)."""
        from t2i.models.ldm.pipeline import LdmPipeline

        return LdmPipeline(self.modules[module], self.autoencoder, self.tokenizer, self.diffusion, self.meta())

    @contextlib.contextmanager
    def autoencoder_on_device(self):
        """With --offload_autoencoder, the autoencoder on the training device for the block, in CPU memory after."""
        if self.cfg.offload_autoencoder:
            self.autoencoder.to(self.device)
        try:
            yield self.autoencoder
        finally:
            if self.cfg.offload_autoencoder:
                self.autoencoder.to("cpu")
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()

    @torch.no_grad()
    def sample_images(self) -> torch.Tensor:
        """4 seeds (rows) x the grid prompts (columns), DDIM 20 steps, guidance 4, from the EMA."""
        n = len(self.grid_prompts)
        with self.autoencoder_on_device():
            return self.pipeline()(self.grid_prompts * 4, [s for s in range(4) for _ in range(n)], steps=20,
                                   guidance=4.0, truncate=True)

    def real_images(self) -> torch.Tensor:
        from t2i.data.transforms import to_uint8

        with torch.no_grad(), self.autoencoder_on_device():
            return to_uint8(self.autoencoder.decode(self.mean[:32, 0].to(self.device)).float().clamp(-1, 1).cpu())

    def meta(self) -> dict:
        return {"family": "ldm", "config": asdict(self.cfg), "net": self.net.to_dict(),
                "diffusion": self.diffusion.to_dict(), "autoencoder": self.autoencoder.cfg.to_dict(),
                "tokenizer": self.tokenizer.to_meta(),
                "vocab": self.vocab}  # the words of its training captions (`t2i generate` warns about others)


def build(cfg: LdmTrainConfig, loop, d, log, init=None) -> LdmFamily:
    """The LDM family object for the shared loop."""
    return LdmFamily(cfg, loop, d, log, init)
