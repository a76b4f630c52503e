"""AttnGAN's published files into t2i snapshots: the DAMSM encoders (`text_encoder200.pth`,
`image_encoder200.pth`), the generator (`netG_epoch_600.pth`) and the vocabulary of `captions.pickle`.

The state dicts are read with `torch.load(weights_only=True)` and the pickle by an unpickler that builds plain
data only, so nothing in these files runs. t2i's modules carry AttnGAN's names, so the mapping is the identity;
every key and shape is checked, and a missing, unexpected or misshapen tensor is an error that names it, never
a partial load. The architecture is read off the tensors' shapes (vocabulary, LSTM or GRU, widths, stages).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from t2i.errors import T2IError
from t2i.models.attngan.damsm import PRESETS as DAMSM_PRESETS
from t2i.models.attngan.damsm import Damsm
from t2i.models.attngan.networks import AttnGanConfig, Generator
from t2i.models.attngan.vocab import END, WordVocab

WORDS = 18   # AttnGAN's TEXT.WORDS_NUM for CUB (its COCO configs use 12)


def read_captions_vocab(path: str | Path) -> WordVocab:
    """The vocabulary (`ixtoword`, the third item) of AttnGAN's captions.pickle, read without running code."""
    from t2i.data.cub import read_plain_pickle

    path = Path(path)
    if not path.is_file():
        raise T2IError(f"captions.pickle {str(path)!r} does not exist; give AttnGAN's data/birds/captions.pickle")
    fix = "give AttnGAN's captions.pickle: [train_captions, test_captions, ixtoword, wordtoix]"
    data = read_plain_pickle(path, fix)
    if not isinstance(data, (list, tuple)) or len(data) != 4 or not isinstance(data[2], dict):
        raise T2IError(f"{path} is not AttnGAN's captions.pickle (a list of 4 with the ixtoword dict third); {fix}")
    ixtoword = {int(k): (v.decode("utf-8") if isinstance(v, bytes) else v) for k, v in data[2].items()}
    if sorted(ixtoword) != list(range(len(ixtoword))) or ixtoword.get(0) != END:
        raise T2IError(f"{path}: ixtoword must map 0..{len(ixtoword) - 1} to words with 0 = {END!r}; {fix}")
    return WordVocab([ixtoword[i] for i in range(len(ixtoword))])


def read_original(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """A state dict file of AttnGAN's (tensors only, read with weights_only)."""
    from t2i.models.foreign import read_state_dict

    return read_state_dict(path, what, f"AttnGAN's {what} (a state dict .pth)",
                           "load it in AttnGAN's code and save `model.state_dict()` with torch.save")


def load_exact(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load every tensor of module from state, or fail naming the missing, unexpected and misshapen keys.
    Batch-norm counters (`num_batches_tracked`, absent from PyTorch < 0.4 files) may be missing."""
    own = module.state_dict()
    state = dict(state)
    for k in own:
        if k.endswith("num_batches_tracked") and k not in state:
            state[k] = torch.zeros((), dtype=torch.long)
    missing, unexpected = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
    wrong = sorted(f"{k} {tuple(state[k].shape)} (expected {tuple(own[k].shape)})" for k in own.keys() & state.keys()
                   if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        raise T2IError(f"{source} does not fit: missing {missing[:5]}{' ...' if len(missing) > 5 else ''}, "
                       f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}, "
                       f"wrong shapes {wrong[:5]}; is it AttnGAN's file of that name?")
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})


def original_damsm(text_encoder: str, image_encoder: str, captions: str, words: int = WORDS) -> Damsm:
    """The DAMSM of AttnGAN's two encoder files and captions.pickle (the arch read off the tensors)."""
    vocab = read_captions_vocab(captions)
    text, image = read_original(text_encoder, "text encoder"), read_original(image_encoder, "image encoder")
    need = ("encoder.weight", "rnn.weight_hh_l0")
    if any(k not in text for k in need) or "emb_features.weight" not in image:
        raise T2IError(f"{text_encoder} / {image_encoder}: not AttnGAN's RNN_ENCODER / CNN_ENCODER state dicts "
                       "(no encoder.weight, rnn.weight_hh_l0 or emb_features.weight)")
    n_words, word_dim = text["encoder.weight"].shape
    gates, hidden = text["rnn.weight_hh_l0"].shape
    if n_words != len(vocab):
        raise T2IError(f"{text_encoder} embeds {n_words} words but {captions} lists {len(vocab)}; give the "
                       "captions.pickle the encoder was trained with")
    arch = replace(DAMSM_PRESETS["paper"], vocab_size=n_words, word_dim=word_dim, embed_dim=2 * hidden,
                   rnn="lstm" if gates == 4 * hidden else "gru")
    damsm = Damsm(arch, vocab, words)
    load_exact(damsm.text_encoder, text, str(text_encoder))
    load_exact(damsm.image_encoder, image, str(image_encoder))
    return damsm.eval().requires_grad_(False)


def original_generator(path: str, embed_dim: int) -> Generator:
    """AttnGAN's G_NET from its state dict (stages, widths, z and CA sizes read off the tensors)."""
    state = read_original(path, "generator")
    if "ca_net.fc.weight" not in state or "img_net1.img.0.weight" not in state:
        raise T2IError(f"{path}: not AttnGAN's G_NET state dict (no ca_net.fc.weight or img_net1.img.0.weight)")
    stages = 1 + sum(f"img_net{k}.img.0.weight" in state for k in range(2, 8))
    c_dim = state["ca_net.fc.weight"].shape[0] // 4
    gf = state["img_net1.img.0.weight"].shape[1]
    ups = sum(f"h_net1.upsample{i}.1.weight" in state for i in range(1, 8))
    blocks = sum(f"h_net2.residual.{i}.block.0.weight" in state for i in range(16))
    cfg = AttnGanConfig(resolutions=[4 * 2 ** ups * 2 ** k for k in range(stages)], c_dim=c_dim, embed_dim=embed_dim,
                        z_dim=state["h_net1.fc.0.weight"].shape[1] - c_dim, gf=gf, res_blocks=max(blocks, 1))
    G = Generator(cfg)
    load_exact(G, state, str(path))
    return G.eval().requires_grad_(False)


def convert_attngan(text_encoder: str, image_encoder: str, captions: str, out: str | Path,
                    generator: str | None = None, words: int = WORDS) -> Path:
    """Write a t2i snapshot: a `damsm` one (for `t2i train attngan --damsm`), or with `generator` an `attngan`
    one that `t2i generate --model` samples (G_ema = the file's G; no discriminators)."""
    from t2i.training.snapshot import save_snapshot

    damsm = original_damsm(text_encoder, image_encoder, captions, words)
    source = {"text_encoder": str(text_encoder), "image_encoder": str(image_encoder), "captions": str(captions)}
    if generator is None:
        return save_snapshot(Path(out), {"damsm": damsm},
                             {"family": "damsm", "config": {}, "damsm": damsm.meta(), "source": source})
    G = original_generator(generator, damsm.arch.embed_dim)
    meta = {"family": "attngan", "config": {}, "net": G.cfg.to_dict(), "damsm": damsm.meta(),
            "vocab": sorted(damsm.vocab.words[1:]), "source": {**source, "generator": str(generator)}}
    return save_snapshot(Path(out), {"G_ema": G, "damsm": damsm}, meta)
