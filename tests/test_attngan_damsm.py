"""DAMSM: vocabulary, the matching losses against a hand-written reference, the encoders, `t2i train damsm`."""

from __future__ import annotations

import json
import math

import pytest
import torch

from t2i.errors import T2IError
from t2i.models.attngan.damsm import PRESETS, DamsmConfig, InceptionImageEncoder, TextEncoder
from t2i.models.attngan.objective import (DamsmWeights, damsm_loss, matching_loss, negatives_mask,
                                          word_region_attention, word_scores)
from t2i.models.attngan.vocab import WordVocab, tokenize, words_per_caption


def test_tokenizer_and_vocabulary():
    assert tokenize("A Red-Circle, at the top!") == ["a", "red", "circle", "at", "the", "top"]
    vocab = WordVocab.build(["a red circle", "a blue square"])
    assert vocab.words == ["<end>", "a", "red", "circle", "blue", "square"]
    assert vocab.ids("A purple circle") == [1, 3]          # unknown words dropped, as AttnGAN does
    assert vocab.unknown("A purple circle") == ["purple"]
    ids, lengths = vocab.encode(["a red circle", "square"], 4)
    assert ids.tolist() == [[1, 2, 3, 0], [5, 0, 0, 0]] and lengths.tolist() == [3, 1]
    with pytest.raises(T2IError, match="<end>"):
        WordVocab(["a", "b"])


def test_long_captions_keep_a_random_ordered_subset():
    vocab = WordVocab.build(["w0 w1 w2 w3 w4 w5 w6 w7"])
    seen = set()
    for seed in range(20):
        ids, lengths = vocab.encode(["w0 w1 w2 w3 w4 w5 w6 w7"], 3, torch.Generator().manual_seed(seed))
        kept = ids[0].tolist()
        assert lengths.item() == 3 and kept == sorted(kept)   # order kept
        seen.add(tuple(kept))
    assert len(seen) > 5                                      # and the subset varies
    assert vocab.encode(["w0 w1 w2 w3"], 2)[0].tolist() == [[1, 2]]   # without a generator: the first words


def test_words_per_caption_is_the_percentile():
    captions = [" ".join(["w"] * k) for k in range(1, 21)]   # lengths 1..20
    vocab = WordVocab.build(captions)
    assert words_per_caption(captions, vocab) == 20          # 95th percentile of 1..20 is 19.05 -> 20
    assert words_per_caption(captions, vocab, 50) == 11


def reference_scores(words, lengths, regions, w: DamsmWeights):
    """Eq. 7-10 with explicit loops, one (image, caption) pair at a time."""
    Bi, Bj = len(regions), len(words)
    out = torch.zeros(Bi, Bj)
    for i in range(Bi):
        v = regions[i].flatten(1)                          # (D, R)
        for j in range(Bj):
            e = words[j, :lengths[j]]                      # (T_j, D)
            s = e @ v                                      # (T_j, R)
            s_bar = torch.exp(s) / torch.exp(s).sum(0, keepdim=True)          # over words (Eq. 8)
            alpha = torch.exp(w.gamma1 * s_bar) / torch.exp(w.gamma1 * s_bar).sum(1, keepdim=True)  # Eq. 9
            c = alpha @ v.t()                              # (T_j, D)
            cos = torch.stack([torch.dot(c[t], e[t]) / (c[t].norm() * e[t].norm()) for t in range(len(e))])
            out[i, j] = math.log(torch.exp(w.gamma2 * cos).sum()) / w.gamma2  # Eq. 10
    return out


def test_word_scores_match_the_equations_and_attention_sums_to_one():
    torch.manual_seed(0)
    w = DamsmWeights()
    words, regions = torch.randn(3, 5, 4), torch.randn(2, 4, 3, 3)
    lengths = torch.tensor([5, 2, 3])
    scores, alpha = word_scores(words, lengths, regions, w)
    assert torch.allclose(scores, reference_scores(words, lengths, regions, w), atol=1e-5)
    assert alpha.shape == (2, 3, 5, 9)
    assert torch.allclose(alpha.sum(-1), torch.ones(2, 3, 5), atol=1e-6)     # over regions, every word
    # padding words change nothing
    padded = words.clone()
    padded[1, 2:] = 100.0
    assert torch.allclose(word_scores(padded, lengths, regions, w)[0], scores, atol=1e-6)
    ctx, _ = word_region_attention(words, lengths, regions, w.gamma1)
    assert ctx.shape == (2, 3, 5, 4)


def test_matching_loss_by_hand_and_class_masking():
    scores = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.8, 0.7], [0.3, 0.6, 0.4]])
    g3 = 10.0
    i2t, t2i = matching_loss(scores, g3, None)
    by_hand = -sum(math.log(math.exp(g3 * scores[i, i]) / sum(math.exp(g3 * scores[i, k]) for k in range(3)))
                   for i in range(3)) / 3
    assert i2t.item() == pytest.approx(by_hand, rel=1e-5)
    by_hand_t = -sum(math.log(math.exp(g3 * scores[i, i]) / sum(math.exp(g3 * scores[k, i]) for k in range(3)))
                     for i in range(3)) / 3
    assert t2i.item() == pytest.approx(by_hand_t, rel=1e-5)
    # images 1 and 2 are of one class: their cross pairs are not negatives
    masked = negatives_mask(torch.tensor([0, 7, 7]), None, 3, "cpu")
    assert masked.tolist() == [[False, False, False], [False, False, True], [False, True, False]]
    m_i2t, _ = matching_loss(scores, g3, masked)
    row1 = -math.log(math.exp(g3 * 0.8) / (math.exp(g3 * 0.2) + math.exp(g3 * 0.8)))
    row2 = -math.log(math.exp(g3 * 0.4) / (math.exp(g3 * 0.3) + math.exp(g3 * 0.4)))
    row0 = -math.log(math.exp(g3 * 0.9) / sum(math.exp(g3 * x) for x in (0.9, 0.1, 0.5)))
    assert m_i2t.item() == pytest.approx((row0 + row1 + row2) / 3, rel=1e-5)
    # a masked pair's score does not matter
    moved = scores.clone()
    moved[1, 2] = 5.0
    assert matching_loss(moved, g3, masked)[0].item() == pytest.approx(m_i2t.item(), rel=1e-6)
    same = torch.tensor([[True, True, False], [True, True, False], [False, False, True]])
    assert negatives_mask(None, same, 3, "cpu")[0, 1]


def test_hard_negatives_join_the_image_to_text_softmax_only():
    scores = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    g3 = 10.0
    extra = torch.tensor([0.7, float("-inf")])          # image 0 has a hard negative, image 1 none
    i2t, t2i = matching_loss(scores, g3, None, extra)
    row0 = -math.log(math.exp(g3 * 0.9) / sum(math.exp(g3 * x) for x in (0.9, 0.1, 0.7)))
    row1 = -math.log(math.exp(g3 * 0.8) / sum(math.exp(g3 * x) for x in (0.2, 0.8)))
    assert i2t.item() == pytest.approx((row0 + row1) / 2, rel=1e-5)
    assert t2i.item() == pytest.approx(matching_loss(scores, g3, None)[1].item(), rel=1e-6)


def test_hard_negative_batches_swap_two_words_of_one_kind(shapes16):
    """With --hard_negatives a batch carries each caption with two interchangeable words swapped; a caption with no
    such pair (one object) is marked invalid; the captions themselves are those of a batch without."""
    from t2i.models.attngan.captions import CaptionedImages

    data = CaptionedImages(str(shapes16), 0, "test", lambda _: None)
    vocab = WordVocab.build(c for caps in data.all_captions for c in caps)
    data.keep_known(vocab)
    plain = data.fetch(torch.arange(64), torch.Generator().manual_seed(3), vocab, 30)
    data.use_hard_negatives(lambda _: None)
    batch = data.fetch(torch.arange(64), torch.Generator().manual_seed(3), vocab, 30)
    assert torch.equal(batch["ids"], plain["ids"])
    # A caption cut to fewer words keeps the same positions in its negative: at most the two swapped words differ.
    short = data.fetch(torch.arange(64), torch.Generator().manual_seed(3), vocab, 8)
    assert torch.equal(short["neg_lengths"], short["lengths"])
    assert ((short["neg_ids"] != short["ids"]).sum(1) <= 2).all() and (short["neg_ids"] != short["ids"]).any()
    valid = batch["neg_valid"]
    assert 0 < valid.sum() < 64
    for k in range(64):
        pos = vocab.decode(batch["ids"][k], int(batch["lengths"][k]))
        neg = vocab.decode(batch["neg_ids"][k], int(batch["neg_lengths"][k]))
        if not valid[k]:
            assert neg == pos
            continue
        assert sorted(neg) == sorted(pos) and neg != pos
        diff = [i for i in range(len(pos)) if pos[i] != neg[i]]
        assert len(diff) == 2 and pos[diff[0]] == neg[diff[1]] and pos[diff[1]] == neg[diff[0]]


def test_damsm_loss_is_low_for_matched_and_gradients_reach_both_encoders():
    cfg = DamsmConfig(vocab_size=10, word_dim=8, embed_dim=8, resolution=16, regions=4, channels=4)
    from t2i.models.attngan.damsm import image_encoder

    text, image = TextEncoder(cfg), image_encoder(cfg)
    ids = torch.tensor([[1, 2, 3], [4, 5, 0]])
    lengths = torch.tensor([3, 2])
    words, sentence = text(ids, lengths)
    assert words.shape == (2, 3, 8) and sentence.shape == (2, 8)
    assert words[1, 2].abs().sum() == 0                      # padding positions are zero
    regions, glob = image(torch.rand(2, 3, 16, 16) * 2 - 1)
    assert regions.shape == (2, 8, 4, 4) and glob.shape == (2, 8)
    loss, stats = damsm_loss(words, sentence, lengths, regions, glob, DamsmWeights())
    loss.backward()
    assert text.encoder.weight.grad.abs().sum() > 0 and image.emb_features.weight.grad.abs().sum() > 0
    assert set(stats) >= {"Loss/damsm_w0", "Loss/damsm_s1", "Damsm/batch_top1"}
    # Hard negatives: image 0 ranks its caption's negative too (image 1 has none); only the i2t terms change.
    from t2i.models.attngan.objective import HardNegatives

    text.zero_grad()
    words, sentence = text(ids, lengths)
    neg_ids = torch.tensor([[3, 2, 1], [4, 5, 0]])
    neg_words, neg_sentence = text(neg_ids, lengths)
    negatives = HardNegatives(neg_words, neg_sentence, lengths, torch.tensor([True, False]))
    with_neg, neg_stats = damsm_loss(words, sentence, lengths, regions.detach(), glob.detach(), DamsmWeights(),
                                     negatives=negatives)
    _, stats = damsm_loss(words, sentence, lengths, regions.detach(), glob.detach(), DamsmWeights())
    assert neg_stats["Loss/damsm_w0"] > stats["Loss/damsm_w0"] and neg_stats["Loss/damsm_s0"] > stats["Loss/damsm_s0"]
    assert neg_stats["Loss/damsm_w1"] == pytest.approx(stats["Loss/damsm_w1"].item(), rel=1e-6)
    assert 0 <= neg_stats["Damsm/beats_hard_negative"] <= 1
    from t2i.models.attngan.objective import hard_negative_scores

    pair_w, pair_s = hard_negative_scores(negatives, regions, glob, DamsmWeights())   # the pairs (i, i) only
    all_pairs = word_scores(neg_words, lengths, regions, DamsmWeights())[0]
    assert pair_w[0].item() == pytest.approx(all_pairs[0, 0].item(), rel=1e-5) and pair_w[1] == float("-inf")
    assert pair_s[0].item() == pytest.approx(torch.cosine_similarity(glob[0], neg_sentence[0], dim=0).item(), rel=1e-5)
    with_neg.backward()
    assert text.encoder.weight.grad[3].abs().sum() > 0


def test_inception_encoder_regions_and_frozen_trunk(tmp_path):
    enc = InceptionImageEncoder(PRESETS["paper"])
    enc.train()
    assert not enc.Mixed_6e.training and enc.emb_features.training   # the trunk keeps its batch-norm statistics
    with torch.no_grad():
        regions, glob = enc(torch.rand(1, 3, 64, 64) * 2 - 1)
    assert regions.shape == (1, 256, 17, 17) and glob.shape == (1, 256)
    assert not any(p.requires_grad for p in enc.Mixed_6e.parameters())
    # G's L_DAMSM reaches the fake images through the frozen trunk (AttnGAN trains G through it); the trunk
    # itself gets no gradient.
    fake = (torch.rand(1, 3, 64, 64) * 2 - 1).requires_grad_(True)
    regions, glob = enc(fake)
    (regions.square().mean() + glob.square().mean()).backward()
    assert fake.grad is not None and fake.grad.abs().sum() > 0
    assert all(p.grad is None for p in enc.Mixed_6e.parameters())
    bad = tmp_path / "bad.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, bad)
    with pytest.raises(T2IError, match="no Inception-v3 trunk"):
        enc.load_trunk(str(bad))
    from torchvision.models import inception_v3

    good = tmp_path / "inception.pth"
    torch.save(inception_v3(weights=None, aux_logits=False, init_weights=False).state_dict(), good)
    enc.load_trunk(str(good))


def test_train_damsm_cli(damsm_run):
    from t2i.models.attngan.damsm import load_damsm

    log = (damsm_run / "log.txt").read_text()
    assert "words per caption" in log and "95th percentile" in log
    assert (damsm_run / "attention-000032.png").is_file() and (damsm_run / "reals.png").is_file()
    from PIL import Image

    picture = Image.open(damsm_run / "attention-000032.png")
    assert picture.width > picture.height                    # a row per sample, a tile per word
    metric = json.loads((damsm_run / "metric-r_at_1.jsonl").read_text().splitlines()[-1])["results"]
    assert set(metric) == {"i2t_word", "t2i_word", "i2t_sentence", "t2i_sentence", "n", "split"}
    assert metric["n"] == 64 and 0 <= metric["i2t_word"] <= 1
    damsm = load_damsm(damsm_run)
    assert not damsm.training and damsm.vocab.words[0] == "<end>"
    words, sentence, lengths = damsm.encode_text(["a red circle"])
    assert words.shape[1] == damsm.words and lengths.tolist() == [3]


def test_damsm_options_are_checked(cli_error, shapes16, tmp_path):
    assert "--inception" in cli_error("train", "damsm", "--data", shapes16, "--preset", "paper", "--outdir", tmp_path)
    assert "--words -1" in cli_error("train", "damsm", "--data", shapes16, "--words", -1, "--outdir", tmp_path)
    assert "does not exist" in cli_error("train", "damsm", "--data", tmp_path / "nope", "--outdir", tmp_path)
