"""The open_clip loader against the original open_clip model it was saved from (random init, offline)."""

import hashlib

import open_clip
import pytest
import torch
from safetensors.torch import save_file
from torchvision.transforms.v2 import functional as TF

from t2i.clip.openclip import load_open_clip
from t2i.errors import T2IError

ARCH = "ViT-B-32"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Run ViT-B-32 on one thread: on the shared 2-core box, two spinning intra-op threads ran 5x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def original():
    """A randomly initialised ViT-B-32, the reference every loaded copy must reproduce."""
    torch.manual_seed(0)
    # Frozen like the loaded copy, so both take the same (fused) attention path and agree bit for bit.
    model = open_clip.create_model(ARCH, pretrained=None).eval().requires_grad_(False)
    # Random init leaves LayerNorms and biases at constants; perturb them so a key that silently kept
    # its init value would show in the outputs (matrices are random already).
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim <= 1:
                p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.fixture(scope="module")
def weight_files(original, tmp_path_factory):
    """The original's weights as an OpenCLIP .safetensors and as an OpenAI-style nested, DDP-prefixed .pt."""
    root = tmp_path_factory.mktemp("openclip")
    state_dict = {k: v.contiguous() for k, v in original.state_dict().items()}
    safetensors_path = root / "open_clip_model.safetensors"
    save_file(state_dict, safetensors_path)
    pt_dict = {f"module.{k}": v for k, v in state_dict.items()}
    pt_dict.update(
        input_resolution=torch.tensor(224), context_length=torch.tensor(77), vocab_size=torch.tensor(49408)
    )
    pt_path = root / "checkpoint.pt"
    torch.save({"epoch": 3, "name": "run", "state_dict": pt_dict}, pt_path)
    return safetensors_path, pt_path


@pytest.fixture(scope="module")
def loaded(weight_files):
    return load_open_clip(ARCH, weight_files[0], "cpu")


def reference_preprocess(images: torch.Tensor) -> torch.Tensor:
    """open_clip's eval transform (Resize shortest side, CenterCrop, Normalize) by torchvision, on tensors."""
    x = (images + 1) / 2
    x = TF.resize(x, [224], interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
    x = TF.center_crop(x, [224, 224]).clamp(0, 1)
    return TF.normalize(x, open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD)


def test_outputs_match_original(original, loaded):
    torch.manual_seed(1)
    images = torch.rand(2, 3, 48, 64) * 2 - 1  # non-square and smaller than 224: resize + crop
    texts = ["a red circle on a blue background", "two small green squares"]
    with torch.no_grad():
        want_img = original.encode_image(reference_preprocess(images))
        want_txt = original.encode_text(open_clip.get_tokenizer(ARCH)(texts))
        got_img, got_txt = loaded.encode_image(images), loaded.encode_text(texts)
    assert got_img.shape == (2, 512) and loaded.embed_dim == 512
    torch.testing.assert_close(got_img, want_img, rtol=1e-6, atol=1e-6)
    assert torch.equal(got_txt, want_txt)


def test_exact_size_input_is_differentiable_and_unresized(original, loaded):
    images = (torch.rand(1, 3, 224, 224) * 2 - 1).requires_grad_(True)
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    got = loaded.encode_image(images)
    # Both with grad enabled: PyTorch's fused no-grad attention path differs in the last bits.
    assert torch.equal(got, original.encode_image(((images + 1) / 2 - mean) / std))
    # LAFITE's itc loss backpropagates through the frozen CLIP into generated images.
    got.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in loaded.model.parameters())


def test_nested_openai_style_pt_loads_same_weights(original, weight_files):
    from_pt = load_open_clip(ARCH, weight_files[1])
    for (name, want), got in zip(original.state_dict().items(), from_pt.model.state_dict().values()):
        assert torch.equal(got, want), name


def test_identity_hashes_weights_file(loaded, weight_files):
    digest = hashlib.sha256(weight_files[0].read_bytes()).hexdigest()[:16]
    assert loaded.identity == f"open_clip:{ARCH}:{digest}"
    assert loaded.max_text_tokens == 75  # context 77 less the start and end tokens


def test_too_long_prompt_raises(loaded):
    prompt = " ".join(["circle"] * 80)
    with pytest.raises(T2IError, match=r"'circle circle.*\.\.\.' is 80 tokens; ViT-B-32's .* at most 75"):
        loaded.encode_text(["fine", prompt])
    assert loaded.encode_text([" ".join(["circle"] * 75)]).shape == (1, 512)  # with start and end: 77


def test_bad_inputs_raise(loaded):
    with pytest.raises(T2IError, match="uint8.*to_model"):
        loaded.encode_image(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(T2IError, match="list of strings"):
        loaded.encode_text("a bare string")


def test_missing_file_and_unknown_arch(tmp_path):
    with pytest.raises(T2IError, match=r"nope\.safetensors does not exist.*never downloads"):
        load_open_clip(ARCH, tmp_path / "nope.safetensors")
    with pytest.raises(T2IError, match=r"Unknown open_clip arch 'ViT-B/32'; did you mean ViT-B-32"):
        load_open_clip("ViT-B/32", tmp_path / "nope.safetensors")
    with pytest.raises(T2IError, match="offline"):
        load_open_clip("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K", tmp_path / "x.safetensors")


def test_unsafe_or_foreign_files_rejected(tmp_path):
    script = tmp_path / "ViT-B-32.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), script)
    with pytest.raises(T2IError, match="TorchScript"):
        load_open_clip(ARCH, script)
    pickled = tmp_path / "object.pt"
    torch.save({"w": torch.zeros(1), "obj": _Unpicklable()}, pickled)
    with pytest.raises(T2IError, match="weights-only"):
        load_open_clip(ARCH, pickled)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"visual.conv1.weight": torch.zeros(1)}, foreign)
    with pytest.raises(T2IError, match="does not hold ViT-B-32 weights.*quickgelu"):
        load_open_clip(ARCH, foreign)


class _Unpicklable:
    """An arbitrary class: loading it would need unpickling code, which weights_only refuses."""
