"""AttnGAN's published files: DAMSM encoders, generator and captions.pickle, written here in the original key
layout at small sizes, converted with `t2i convert attngan` and sampled."""

from __future__ import annotations

import pickle
from dataclasses import replace

import pytest
import torch

from conftest import cli
from t2i.models.attngan.damsm import PRESETS as DAMSM_PRESETS
from t2i.models.attngan.damsm import InceptionImageEncoder, TextEncoder
from t2i.models.attngan.networks import AttnGanConfig, Generator

WORDS = ["<end>", "this", "bird", "has", "a", "red", "crown"]


def old_layout(module) -> dict[str, torch.Tensor]:
    """A state dict as PyTorch 0.3 wrote AttnGAN's files: no batch-norm counters."""
    return {k: v for k, v in module.state_dict().items() if not k.endswith("num_batches_tracked")}


@pytest.fixture(scope="module")
def original_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("attngan-original")
    torch.manual_seed(0)
    arch = replace(DAMSM_PRESETS["paper"], vocab_size=len(WORDS), word_dim=12, embed_dim=8)
    text, image = TextEncoder(arch), InceptionImageEncoder(arch)
    G = Generator(AttnGanConfig(resolutions=[8, 16, 32], z_dim=6, c_dim=4, embed_dim=8, gf=4, res_blocks=2))
    for m in (G, image):   # batch-norm statistics other than the defaults, as a trained file has
        for b in m.modules():
            if isinstance(b, torch.nn.BatchNorm2d):
                b.running_mean.uniform_(-0.1, 0.1)
    torch.save(old_layout(text), root / "text_encoder200.pth")
    torch.save(old_layout(image), root / "image_encoder200.pth")
    torch.save(old_layout(G), root / "netG_epoch_600.pth")
    ixtoword = dict(enumerate(WORDS))
    with open(root / "captions.pickle", "wb") as f:   # protocol 2, as AttnGAN's Python 2 code wrote it
        pickle.dump([[[1, 2, 3]], [[1, 2]], ixtoword, {w: i for i, w in ixtoword.items()}], f, protocol=2)
    return root, text, G


def args(root, *more):
    return ["convert", "attngan", "--text_encoder", root / "text_encoder200.pth", "--image_encoder",
            root / "image_encoder200.pth", "--captions", root / "captions.pickle", *more]


def test_convert_and_sample(original_files, tmp_path):
    from t2i.models import load_pipeline
    from t2i.models.attngan.damsm import load_damsm

    root, text, G = original_files
    cli(*args(root, "--generator", root / "netG_epoch_600.pth", "--out", tmp_path / "attngan"))
    pipe = load_pipeline(tmp_path / "attngan")
    assert pipe.G.cfg.resolutions == [8, 16, 32] and pipe.damsm.vocab.words == WORDS and pipe.damsm.words == 18
    for k, v in G.state_dict().items():
        assert torch.equal(pipe.G.state_dict()[k], v) or k.endswith("num_batches_tracked")
    images = pipe(["this bird has a red crown"], [0])
    assert images.shape == (1, 3, 32, 32)
    # the same computation by hand: the original text encoder, G with the seed's z and CA noise
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    with torch.no_grad():
        words, sentence = text.eval()(ids, torch.tensor([6]))
        g = torch.Generator().manual_seed(0)
        z, eps = torch.randn(6, generator=g), torch.randn(4, generator=g)
        from t2i.models.attngan.networks import WordCondition

        out = G.eval()(z[None], WordCondition(sentence, words, torch.tensor([6])), eps[None]).images[-1]
    from t2i.data.transforms import to_uint8

    assert torch.equal(to_uint8(out), images)
    cli(*args(root, "--out", tmp_path / "damsm"))
    assert load_damsm(tmp_path / "damsm").vocab.words == WORDS


def test_mismatches_are_named(original_files, tmp_path, cli_error):
    root, _, G = original_files
    state = old_layout(G)
    del state["h_net2.att.conv_context.weight"]
    state["img_net1.img.0.weight"] = torch.zeros(3, 5, 3, 3)
    torch.save(state, tmp_path / "bad_G.pth")
    err = cli_error(*args(root, "--generator", tmp_path / "bad_G.pth", "--out", tmp_path / "x"))
    assert "h_net2.att.conv_context.weight" in err
    text = torch.load(root / "text_encoder200.pth", weights_only=True)
    text["encoder.weight"] = torch.zeros(3, 12)
    torch.save(text, tmp_path / "bad_text.pth")
    err = cli_error("convert", "attngan", "--text_encoder", tmp_path / "bad_text.pth", "--image_encoder",
                    root / "image_encoder200.pth", "--captions", root / "captions.pickle", "--out", tmp_path / "y")
    assert "embeds 3 words" in err and not (tmp_path / "y").exists()


def test_captions_pickle_is_read_without_running_code(tmp_path, cli_error, original_files):
    from t2i.models.attngan.original import read_captions_vocab

    root, _, _ = original_files
    assert read_captions_vocab(root / "captions.pickle").words == WORDS

    class Evil:
        def __reduce__(self):
            return (print, ("ran",))

    with open(tmp_path / "captions.pickle", "wb") as f:
        pickle.dump([[], [], {0: "<end>"}, Evil()], f)
    err = cli_error("convert", "attngan", "--text_encoder", root / "text_encoder200.pth", "--image_encoder",
                    root / "image_encoder200.pth", "--captions", tmp_path / "captions.pickle", "--out", tmp_path / "z")
    assert "never runs code" in err and "builtins.print" in err
