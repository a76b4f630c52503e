"""DAMSM's encoders (AttnGAN Sec. 3.3): a bi-LSTM text encoder giving word and sentence features, and an image
encoder giving region and global features, both in one embedding space of `embed_dim`.

Module and parameter names follow AttnGAN's RNN_ENCODER / CNN_ENCODER (`encoder`, `rnn`, `Mixed_6e`,
`emb_features`, `emb_cnn_code`), so its published `text_encoder200.pth` / `image_encoder200.pth` load by name.
The `paper` image encoder is torchvision's Inception-v3 trunk, frozen (its weights from a local file);
`tiny` and `test` use a small CNN trained from scratch, for 64px shapes. `Damsm` holds both with the vocabulary
they read; `load_damsm` rebuilds a frozen one from a snapshot.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from t2i.errors import T2IError
from t2i.models.attngan.vocab import WordVocab


@dataclass
class DamsmConfig:
    """Architecture of both encoders (stored in snapshots; `vocab_size` and `resolution` follow the data)."""

    vocab_size: int = 0
    word_dim: int = 300          # word embedding size (AttnGAN: 300)
    embed_dim: int = 256         # shared space: word, sentence, region and global features (AttnGAN: 256)
    rnn: str = "lstm"            # lstm | gru; bidirectional, embed_dim / 2 hidden units each way
    dropout: float = 0.5         # on word embeddings while training
    image_encoder: str = "cnn"   # cnn (small, trained) | inception (frozen torchvision Inception-v3 trunk)
    resolution: int = 64         # image side the cnn is built for (inception: any, resized to 299)
    regions: int = 8             # cnn: side of the region grid (inception: 17, from Mixed_6e)
    channels: int = 32           # cnn: channels of the first block, doubled per block

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DamsmConfig:
        return cls(**d)


PRESETS = {
    "test": DamsmConfig(word_dim=16, embed_dim=16, resolution=16, regions=4, channels=8),
    "tiny": DamsmConfig(word_dim=128, embed_dim=128, resolution=64, regions=8, channels=32),
    # AttnGAN's CUB/COCO DAMSM: 300-d words, 256-d space, Inception-v3 regions (17x17 Mixed_6e) and pool.
    "paper": DamsmConfig(word_dim=300, embed_dim=256, image_encoder="inception", resolution=299, regions=17),
}


class TextEncoder(nn.Module):
    """Bi-LSTM over word embeddings: ids (B, T), lengths (B,) -> words (B, T, D), sentence (B, D)."""

    def __init__(self, cfg: DamsmConfig):
        super().__init__()
        if cfg.vocab_size < 2:
            raise T2IError(f"DAMSM text encoder needs a vocabulary of at least 2 words, got {cfg.vocab_size}")
        if cfg.embed_dim % 2:
            raise T2IError(f"DAMSM embed_dim {cfg.embed_dim} must be even (half per LSTM direction)")
        self.cfg = cfg
        self.encoder = nn.Embedding(cfg.vocab_size, cfg.word_dim)
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        rnn = {"lstm": nn.LSTM, "gru": nn.GRU}[cfg.rnn]
        self.rnn = rnn(cfg.word_dim, cfg.embed_dim // 2, batch_first=True, bidirectional=True)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = F.dropout(self.encoder(ids), self.cfg.dropout, self.training)           # (B, T, word_dim)
        packed = nn.utils.rnn.pack_padded_sequence(emb, lengths.clamp(min=1).cpu(), batch_first=True,
                                                   enforce_sorted=False)
        out, hidden = self.rnn(packed)
        words = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=ids.shape[1])[0]  # (B, T, D)
        h = hidden[0] if isinstance(hidden, tuple) else hidden                        # (2, B, D/2)
        sentence = h.transpose(0, 1).reshape(len(ids), -1)                            # (B, D): both final states
        return words, sentence


def _down(cin: int, cout: int) -> nn.Sequential:
    """4x4 stride-2 convolution, batch norm, leaky ReLU: half the side."""
    return nn.Sequential(nn.Conv2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2))


class CnnImageEncoder(nn.Module):
    """Small CNN: images (B, 3, R, R) in [-1, 1] -> regions (B, D, r, r), global (B, D)."""

    def __init__(self, cfg: DamsmConfig):
        super().__init__()
        n_regions = math.log2(cfg.resolution / cfg.regions)
        if cfg.resolution % cfg.regions or n_regions != int(n_regions) or n_regions < 1 or cfg.regions < 2:
            raise T2IError(f"DAMSM cnn: --resolution {cfg.resolution} must be the region grid {cfg.regions} "
                           "times a power of two (at least 2)")
        self.cfg = cfg
        c, blocks = cfg.channels, []
        for i in range(int(n_regions)):
            blocks.append(_down(3 if i == 0 else c * 2 ** (i - 1), c * 2 ** i))
        self.regions_trunk = nn.Sequential(*blocks)
        c_regions = c * 2 ** (int(n_regions) - 1)
        self.global_trunk = nn.Sequential(_down(c_regions, c_regions * 2), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.emb_features = nn.Conv2d(c_regions, cfg.embed_dim, 1, bias=False)
        self.emb_cnn_code = nn.Linear(c_regions * 2, cfg.embed_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.shape[-1] != self.cfg.resolution:
            x = F.interpolate(x, size=(self.cfg.resolution,) * 2, mode="bilinear", align_corners=False,
                              antialias=x.shape[-1] > self.cfg.resolution)
        h = self.regions_trunk(x)                                   # (B, C, r, r)
        return self.emb_features(h), self.emb_cnn_code(self.global_trunk(h))


INCEPTION_TRUNK = ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
                   "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
                   "Mixed_6e"]
INCEPTION_TOP = ["Mixed_7a", "Mixed_7b", "Mixed_7c"]


class InceptionImageEncoder(nn.Module):
    """AttnGAN's CNN_ENCODER: a frozen Inception-v3 trunk; regions from Mixed_6e (17x17x768) and the global
    feature from the 2048-d pool, each projected to D. Images in [-1, 1] go in as they are: the Google
    weights expect [-1, 1] (torchvision's transform_input maps ImageNet-normalised input there)."""

    def __init__(self, cfg: DamsmConfig):
        super().__init__()
        from torchvision.models import inception_v3

        self.cfg = cfg
        net = inception_v3(weights=None, aux_logits=False, init_weights=False)
        for name in INCEPTION_TRUNK + INCEPTION_TOP:
            if not name.startswith("maxpool"):
                setattr(self, name, getattr(net, name))
        self.emb_features = nn.Conv2d(768, cfg.embed_dim, 1, bias=False)
        self.emb_cnn_code = nn.Linear(2048, cfg.embed_dim)
        nn.init.uniform_(self.emb_features.weight, -0.1, 0.1)
        nn.init.uniform_(self.emb_cnn_code.weight, -0.1, 0.1)
        self.frozen = [getattr(self, n) for n in INCEPTION_TRUNK + INCEPTION_TOP if not n.startswith("maxpool")]
        for m in self.frozen:
            m.requires_grad_(False)

    def train(self, mode: bool = True) -> InceptionImageEncoder:
        """Only the projections train: the trunk's batch norms keep their ImageNet statistics."""
        super().train(mode)
        for m in self.frozen:
            m.eval()
        return self

    def load_trunk(self, path: str) -> None:
        """Load torchvision Inception-v3 weights (a state dict file, e.g. inception_v3_google-*.pth)."""
        from t2i.models.foreign import read_state_dict

        state = read_state_dict(path, "Inception-v3 weights", "torchvision's inception_v3 state dict "
                                "(inception_v3_google-*.pth)", "save its state_dict() with torch.save")
        trunk = {k: v for k, v in state.items() if k.split(".", 1)[0] in INCEPTION_TRUNK + INCEPTION_TOP}
        if not trunk:
            raise T2IError(f"{path} holds no Inception-v3 trunk weights (no Mixed_6e.* keys); give torchvision's "
                           "inception_v3 state dict")
        own = {k: v for k, v in self.state_dict().items() if not k.startswith("emb_")}
        missing = sorted(own.keys() - trunk.keys())
        wrong = sorted(k for k in own.keys() & trunk.keys() if own[k].shape != trunk[k].shape)
        if missing or wrong:
            raise T2IError(f"{path} does not fit Inception-v3: missing {missing[:5]}, wrong shapes {wrong[:5]}")
        self.load_state_dict(trunk, strict=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        # The trunk is frozen, but G's L_DAMSM must reach the fake images through it (AttnGAN backpropagates
        # through its frozen encoder). Reals (DAMSM training) do not require grad, so no graph is kept for them.
        for name in INCEPTION_TRUNK:
            x = F.max_pool2d(x, 3, 2) if name.startswith("maxpool") else getattr(self, name)(x)
        regions = x                                                  # (B, 768, 17, 17)
        for name in INCEPTION_TOP:
            x = getattr(self, name)(x)
        pooled = x.mean((2, 3))                                      # (B, 2048)
        return self.emb_features(regions), self.emb_cnn_code(pooled)


def image_encoder(cfg: DamsmConfig) -> nn.Module:
    """The image encoder the config names."""
    if cfg.image_encoder == "cnn":
        return CnnImageEncoder(cfg)
    if cfg.image_encoder == "inception":
        return InceptionImageEncoder(cfg)
    raise T2IError(f"unknown DAMSM image encoder {cfg.image_encoder!r}; choose cnn or inception")


class Damsm(nn.Module):
    """Both encoders under one module (the phase's), with the vocabulary and words per caption they read."""

    def __init__(self, arch: DamsmConfig, vocab: WordVocab, words: int):
        super().__init__()
        self.arch, self.vocab, self.words = arch, vocab, words
        self.text_encoder = TextEncoder(arch)
        self.image_encoder = image_encoder(arch)

    def encode_text(self, captions: list[str], generator: torch.Generator | None = None):
        """words (B, T, D), sentence (B, D), lengths (B,) of captions (unknown words dropped)."""
        device = self.text_encoder.encoder.weight.device
        ids, lengths = self.vocab.encode(captions, self.words, generator)
        words, sentence = self.text_encoder(ids.to(device), lengths.to(device))
        return words, sentence, lengths.to(device)

    def meta(self) -> dict:
        return {"arch": self.arch.to_dict(), "vocab": self.vocab.words, "words": self.words}


class SentenceScorer:
    """A DAMSM behind the CLIP interface of the retrieval metrics: global image features and sentence features.
    Ranking captions by their cosine is the R-precision AttnGAN papers report (DM-GAN's code)."""

    def __init__(self, damsm: Damsm, identity: str):
        self.damsm, self.identity = damsm, identity
        self.embed_dim = damsm.arch.embed_dim

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """(B, D) global features of images in [-1, 1]."""
        return self.damsm.image_encoder(images.to(self.damsm.text_encoder.encoder.weight.device))[1]

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """(B, D) sentence features (the first `words` known words of each text)."""
        return self.damsm.encode_text(texts)[1]


def load_damsm(path: str | Path, device="cpu") -> Damsm:
    """A frozen DAMSM (eval mode) from a `t2i train damsm` run or snapshot, or any snapshot embedding one."""
    from t2i.training.snapshot import load_snapshot

    snap = load_snapshot(path)
    if "damsm" not in snap.meta:
        raise T2IError(f"{snap.path} holds no DAMSM (family {snap.family!r}); train one with `t2i train damsm`")
    return damsm_from_meta(snap.meta["damsm"], snap.state_dict("damsm"), device)


def damsm_from_meta(meta: dict, state: dict[str, torch.Tensor], device) -> Damsm:
    """Rebuild a frozen Damsm from `Damsm.meta()` and its state dict."""
    model = Damsm(DamsmConfig.from_dict(meta["arch"]), WordVocab(meta["vocab"]), int(meta["words"]))
    model.load_state_dict(state)
    return model.to(device).eval().requires_grad_(False)
