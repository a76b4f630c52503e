"""DALL-E transformer: modality masks, the (text + 7 image) / 8 loss, null-text dropout, KV-cache
equivalence, top-k / top-p filtering and guidance."""

import math

import pytest
import torch
import torch.nn.functional as F

from t2i.models.dalle.objective import dalle_loss, drop_text, null_text
from t2i.models.dalle.sampling import filter_logits, generate, guided
from t2i.models.dalle.transformer import PRESETS, DalleConfig, DalleTransformer, causal_attention


def make(seed=0, **kw) -> DalleTransformer:
    torch.manual_seed(seed)
    cfg = DalleConfig(**{**PRESETS["test"].to_dict(), "text_len": 6, "text_vocab": 20 + 6, "image_len": 9,
                         "image_vocab": 12, **kw})
    return DalleTransformer(cfg).eval()


def batch(model, B=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    cfg = model.cfg
    return (torch.randint(0, cfg.text_vocab, (B, cfg.text_len), generator=g),
            torch.randint(0, cfg.image_vocab, (B, cfg.image_len), generator=g))


def test_image_positions_are_row_plus_column_embeddings():
    model = make()
    cfg = model.cfg
    pos = model.positions(0, cfg.seq_len)
    assert pos.shape == (cfg.seq_len, cfg.dim) and torch.equal(pos[:1 + cfg.text_len], model.pos_emb)
    for i in range(cfg.image_len - 1):   # image token i is the input at 1 + text_len + i
        assert torch.equal(pos[1 + cfg.text_len + i], model.row_emb[i // 3] + model.col_emb[i % 3])
    assert torch.equal(model.positions(4, 3), pos[4:7])                 # a cached step's slice
    with pytest.raises(ValueError, match="not a square"):
        make(image_len=8)


def test_text_positions_never_predict_image_ids():
    model = make()
    text, image = batch(model)
    logits = model(model.sequence(text, image)[:, :-1])
    cfg = model.cfg
    T = cfg.text_len
    assert logits.shape == (3, cfg.seq_len, cfg.vocab)
    assert torch.isinf(logits[:, :T, cfg.text_vocab:]).all()          # no <bos>, no image id from text
    assert torch.isfinite(logits[:, :T, :cfg.text_vocab]).all()
    assert torch.isinf(logits[:, T:, :cfg.text_vocab + 1]).all()      # image positions: image ids only
    assert torch.isfinite(logits[:, T:, cfg.text_vocab + 1:]).all()


def test_causal_text_is_unaffected_by_image_tokens():
    model = make()
    text, image = batch(model)
    a = model(model.sequence(text, image)[:, :-1])
    b = model(model.sequence(text, (image + 1) % model.cfg.image_vocab)[:, :-1])
    T = model.cfg.text_len
    assert torch.allclose(a[:, :T + 1], b[:, :T + 1])  # up to the first image prediction
    assert not torch.allclose(a[:, T + 1:], b[:, T + 1:])


def test_loss_is_weighted_mean_of_masked_cross_entropies():
    model = make()
    text, image = batch(model)
    loss, stats = dalle_loss(model, text, image)
    logits = model(model.sequence(text, image)[:, :-1]).float()        # -inf masked
    T = model.cfg.text_len
    lt = F.cross_entropy(logits[:, :T].flatten(0, 1), text.flatten())
    li = F.cross_entropy(logits[:, T:].flatten(0, 1), (image + model.cfg.text_vocab + 1).flatten())
    assert torch.allclose(stats["Loss/text"], lt, atol=1e-5) and torch.allclose(stats["Loss/image"], li, atol=1e-5)
    assert torch.allclose(loss, (lt + 7 * li) / 8, atol=1e-5)
    # at initialisation the image loss is close to a uniform guess over the codebook
    assert abs(float(stats["Loss/image"]) - math.log(model.cfg.image_vocab)) < 0.3


def test_null_text_dropout():
    model = make()
    text, _ = batch(model, B=400)
    null = null_text(model.cfg)
    assert null.tolist() == [[20 + i for i in range(6)]]  # the per-position padding ids
    torch.manual_seed(0)
    dropped = drop_text(text, model.cfg, 0.25)
    is_null = (dropped == null).all(1)
    assert 0.15 < is_null.float().mean() < 0.35
    assert torch.equal(dropped[~is_null], text[~is_null])
    assert torch.equal(drop_text(text, model.cfg, 0.0), text)


def test_kv_cache_matches_full_forward():
    model = make()
    text, image = batch(model)
    tokens = model.sequence(text, image)[:, :-1]
    full = model(tokens)
    caches = [{} for _ in model.blocks]
    P = model.cfg.text_len + 1
    parts = [model(tokens[:, :P], caches)]
    for t in range(P, tokens.shape[1]):
        parts.append(model(tokens[:, t:t + 1], caches, start=t))
    stepped = torch.cat(parts, 1)
    finite = torch.isfinite(full)
    assert torch.equal(finite, torch.isfinite(stepped))
    assert torch.allclose(full[finite], stepped[finite], atol=1e-5)


def test_cpu_causal_attention_matches_sdpa_with_gradients():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 7, 8, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))
    grad = torch.randn(2, 3, 7, 8, generator=g, dtype=torch.float64)
    ours = causal_attention(q, k, v)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert torch.allclose(ours, ref, atol=1e-10)
    ours_grads = torch.autograd.grad(ours, (q, k, v), grad)
    ref_grads = torch.autograd.grad(ref, (q, k, v), grad)
    for a, b in zip(ours_grads, ref_grads):
        assert torch.allclose(a, b, atol=1e-10)
    # Token t never sees a later one: changing the last key and value leaves earlier outputs alone.
    k2, v2 = k.detach().clone(), v.detach().clone()
    k2[:, :, -1] += 5
    v2[:, :, -1] -= 5
    assert torch.equal(causal_attention(q, k2, v2)[:, :, :-1], ours.detach()[:, :, :-1])
    # Dropout on the attention weights applies only where asked for.
    torch.manual_seed(0)
    assert not torch.allclose(causal_attention(q, k, v, dropout=0.5), ours)


@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_generate_with_and_without_cache_agree(scale):
    model = make()
    text, _ = batch(model, B=2)
    kw = dict(temperature=1.0, top_k=6, guidance_scale=scale)
    a = generate(model, text, use_cache=True, generator=torch.Generator().manual_seed(5), **kw)
    b = generate(model, text, use_cache=False, generator=torch.Generator().manual_seed(5), **kw)
    assert a.shape == (2, model.cfg.image_len) and a.min() >= 0 and a.max() < model.cfg.image_vocab
    assert torch.equal(a, b)


def test_filter_logits():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])
    assert torch.isinf(filter_logits(logits, top_k=2)[0, 2:]).all()
    assert torch.isfinite(filter_logits(logits, top_k=2)[0, :2]).all()
    p = logits.softmax(-1)[0]
    kept = torch.isfinite(filter_logits(logits, top_p=float(p[0] + 0.01)))[0]
    assert kept.tolist() == [True, True, False, False, False]  # smallest prefix reaching top_p
    assert torch.isfinite(filter_logits(logits, top_p=1.0)).all()


def test_guidance_scale_one_is_the_conditional():
    logits = torch.randn(4, 7)
    assert torch.allclose(guided(logits, 1.0), logits[:2].log_softmax(-1), atol=1e-6)
    cond, unc = logits[:2].log_softmax(-1), logits[2:].log_softmax(-1)
    assert torch.allclose(guided(logits, 3.0), unc + 3 * (cond - unc), atol=1e-6)


def test_config_guards():
    with pytest.raises(ValueError, match="must be set"):
        DalleTransformer(DalleConfig())
    with pytest.raises(ValueError, match="multiple of heads"):
        DalleTransformer(DalleConfig(dim=30, heads=4, text_vocab=10, image_vocab=10))
