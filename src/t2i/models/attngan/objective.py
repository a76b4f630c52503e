"""AttnGAN's objective: the DAMSM matching losses (Sec. 3.3 of arXiv 1711.10485), used to pretrain the encoders
and, frozen, as the generator's L_DAMSM term.

Shapes: words (B, T, D) with lengths (B,), regions (B, D, h, w), sentence and global features (B, D).
Score matrices are (images, captions): entry [i, j] scores image i against caption j.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from t2i.clip.loss import info_nce


@dataclass
class DamsmWeights:
    """The smoothing factors of the DAMSM loss (AttnGAN's CUB values)."""

    gamma1: float = 4.0          # attention sharpness over regions (Eq. 9)
    gamma2: float = 5.0          # how much the best-matching words dominate R(Q, D) (Eq. 10)
    gamma3: float = 10.0         # posterior smoothing (Eq. 11)


GAMMA_HELP = {"gamma1": "DAMSM: attention sharpness over regions (Eq. 9)",
              "gamma2": "DAMSM: weight of the best-matching words in the word-level score (Eq. 10)",
              "gamma3": "DAMSM: posterior smoothing of both matching losses (Eq. 11)"}


def word_mask(lengths: torch.Tensor, T: int) -> torch.Tensor:
    """(B, T) True at real words, False at padding."""
    return torch.arange(T, device=lengths.device)[None, :] < lengths[:, None]


def word_region_attention(words: torch.Tensor, lengths: torch.Tensor, regions: torch.Tensor, gamma1: float
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """For every (image i, caption j): each word's attention over image i's regions and its region-context vector.

    s = e^T v (Eq. 7); normalised over the caption's words (Eq. 8); alpha = softmax_regions(gamma1 * s) (Eq. 9);
    c = sum_r alpha_r v_r. Returns context (Bi, Bj, T, D) and alpha (Bi, Bj, T, h*w).
    """
    v = regions.flatten(2)                                               # (Bi, D, R)
    s = torch.einsum("jtd,idr->ijtr", words, v)                          # (Bi, Bj, T, R)
    real = word_mask(lengths, words.shape[1])[None, :, :, None]          # (1, Bj, T, 1)
    s = s.masked_fill(~real, float("-inf")).softmax(dim=2).masked_fill(~real, 0.0)
    alpha = (gamma1 * s).softmax(dim=3)
    context = torch.einsum("ijtr,idr->ijtd", alpha, v)                   # (Bi, Bj, T, D)
    return context, alpha


def word_scores(words: torch.Tensor, lengths: torch.Tensor, regions: torch.Tensor, w: DamsmWeights
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """R(Q_i, D_j) = log(sum_t exp(gamma2 cos(c_t, e_t)))^(1 / gamma2) over caption j's real words (Eq. 10):
    scores (Bi, Bj), and alpha (Bi, Bj, T, R). The paper's 1/gamma2 is kept (AttnGAN's code drops it, which only
    rescales the logits by gamma2); rankings are the same either way."""
    context, alpha = word_region_attention(words, lengths, regions, w.gamma1)
    cos = F.cosine_similarity(context, words[None].expand_as(context), dim=-1, eps=1e-8)   # (Bi, Bj, T)
    real = word_mask(lengths, words.shape[1])[None]                                       # (1, Bj, T)
    scores = torch.logsumexp((w.gamma2 * cos).masked_fill(~real, float("-inf")), dim=2) / w.gamma2
    return scores, alpha


def sentence_scores(global_features: torch.Tensor, sentence: torch.Tensor) -> torch.Tensor:
    """cos(image i's global feature, caption j's sentence feature): (Bi, Bj)."""
    return F.normalize(global_features, dim=-1, eps=1e-8) @ F.normalize(sentence, dim=-1, eps=1e-8).t()


def negatives_mask(class_ids: torch.Tensor | None, same_caption: torch.Tensor | None, B: int,
                   device) -> torch.Tensor:
    """(B, B) True where a pair i != j must not count as a negative: the same class (AttnGAN masks those), or
    the same caption text (duplicates in a batch are not mismatches)."""
    mask = torch.zeros(B, B, dtype=torch.bool, device=device)
    if class_ids is not None:
        mask |= class_ids[:, None] == class_ids[None, :]
    if same_caption is not None:
        mask |= same_caption
    return mask & ~torch.eye(B, dtype=torch.bool, device=device)


def same_caption(ids: torch.Tensor) -> torch.Tensor:
    """(B, B) True where two encoded captions (B, T) are the same words."""
    return (ids[:, None, :] == ids[None, :, :]).all(-1)


def batch_negatives(ids: torch.Tensor, class_ids: torch.Tensor | None) -> torch.Tensor:
    """`negatives_mask` of a training batch: its encoded captions (B, T) and its class ids (or None)."""
    class_ids = class_ids.to(ids.device) if class_ids is not None else None
    return negatives_mask(class_ids, same_caption(ids), len(ids), ids.device)


def matching_loss(scores: torch.Tensor, gamma3: float, masked: torch.Tensor | None, extra: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 11-13 both ways on matched pairs (i, i): -log P(D_i | Q_i) over captions (image -> text) and
    -log P(Q_i | D_i) over images (text -> image), masked pairs excluded from the softmax. `extra` (B,): the score
    of image i against one more caption of its own, a hard negative, in the image -> text direction only (-inf
    where there is none)."""
    logits = gamma3 * scores
    if masked is not None:
        logits = logits.masked_fill(masked, float("-inf"))
    target = torch.arange(len(scores), device=scores.device)
    i2t = logits if extra is None else torch.cat([logits, gamma3 * extra[:, None]], 1)
    return F.cross_entropy(i2t, target), F.cross_entropy(logits.t(), target)


class HardNegatives(NamedTuple):
    """Each caption's hard negative (its words with two interchangeable ones swapped, `t2i.clip.negatives`), as
    text-encoder features: words (B, T, D), sentence (B, D), lengths (B,), and valid (B,) where one exists."""

    words: torch.Tensor
    sentence: torch.Tensor
    lengths: torch.Tensor
    valid: torch.Tensor


def hard_negative_scores(negatives: HardNegatives, regions: torch.Tensor, global_features: torch.Tensor,
                         w: DamsmWeights) -> tuple[torch.Tensor, torch.Tensor]:
    """Image i against caption i's hard negative: word-level and sentence scores (B,) each, -inf where none. The
    word-level scores of the B pairs only (vmap over pairs), not of all B x B as `word_scores` gives."""
    pair = lambda e, n, v: word_scores(e[None], n[None], v[None], w)[0][0, 0]  # noqa: E731
    ws = torch.vmap(pair)(negatives.words.float(), negatives.lengths, regions.float())
    ss = F.cosine_similarity(global_features.float(), negatives.sentence.float(), dim=-1, eps=1e-8)
    off = ~negatives.valid
    return ws.masked_fill(off, float("-inf")), ss.masked_fill(off, float("-inf"))


def damsm_loss(words: torch.Tensor, sentence: torch.Tensor, lengths: torch.Tensor, regions: torch.Tensor,
               global_features: torch.Tensor, w: DamsmWeights, masked: torch.Tensor | None = None,
               negatives: HardNegatives | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L_DAMSM = L1^w + L2^w + L1^s + L2^s (Eq. 13-14) for a batch of matched (image, caption) pairs; with
    `negatives` each image also ranks its caption's hard negative (image -> text terms). The stats dict holds each
    term and the batch's word-level image->text top-1 accuracy (and how often the true caption beats its hard
    negative)."""
    ws, _ = word_scores(words.float(), lengths, regions.float(), w)
    ss = sentence_scores(global_features.float(), sentence.float())
    neg_w = neg_s = None
    if negatives is not None:
        neg_w, neg_s = hard_negative_scores(negatives, regions, global_features, w)
    w0, w1 = matching_loss(ws, w.gamma3, masked, neg_w)
    s0, s1 = matching_loss(ss, w.gamma3, masked, neg_s)
    hit = ws.masked_fill(masked, float("-inf")) if masked is not None else ws
    acc = (hit.argmax(1) == torch.arange(len(ws), device=ws.device)).float().mean()
    stats = {"Loss/damsm_w0": w0.detach(), "Loss/damsm_w1": w1.detach(), "Loss/damsm_s0": s0.detach(),
             "Loss/damsm_s1": s1.detach(), "Damsm/batch_top1": acc}
    if negatives is not None and negatives.valid.any():
        beats = (ws.diagonal() > neg_w)[negatives.valid]
        stats["Damsm/beats_hard_negative"] = beats.float().mean()
    return w0 + w1 + s0 + s1, stats


# ---- the GAN (Sec. 3.1 and Eq. 3-5): per-stage D and G losses, CA's KL, and L_DAMSM on the last stage ----

def kl_loss(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, I)) of conditioning augmentation, averaged over elements (AttnGAN's KL_loss)."""
    return -0.5 * torch.mean(1 + logvar - mu.pow(2) - logvar.exp())


def bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def d_features(D, real: torch.Tensor, fake: torch.Tensor, joint: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """D's image codes of the reals and the fakes: in two batches (AttnGAN's), or with `joint` in one, so that D's
    batch norms normalise both by the same statistics. Apart, a fault that every fake shares (an extra object, a
    colour cast, the same image for every z) is part of the fake batch's mean and normalised away before D can
    see it."""
    if not joint:
        return D(real), D(fake)
    return D(torch.cat([real, fake])).split([len(real), len(fake)])


class Contrastive(NamedTuple):
    """LAFITE's / XMC-GAN's contrastive discriminator term: `weight` x InfoNCE (temperature `temp`) between each
    image's D features and its sentence against the batch's other sentences; `positives` (B, B) marks the pairs
    with the same caption (not negatives of each other)."""

    weight: float
    temp: float
    positives: torch.Tensor


def contrastive_term(D, h: torch.Tensor, sentence: torch.Tensor, term: Contrastive) -> torch.Tensor:
    """The weighted InfoNCE of image codes h (B, 8df, 4, 4) against their sentences, on D's projection features."""
    img, txt = D.COND_DNET.pair_features(h, sentence)
    return term.weight * info_nce(img, txt, term.temp, term.positives)


def d_stage_loss(D, real: torch.Tensor, fake: torch.Tensor, sentence: torch.Tensor, wrong: torch.Tensor,
                 hard: tuple[torch.Tensor, torch.Tensor] | None = None, joint: bool = False,
                 contrastive: Contrastive | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One stage's D loss: (real + cond_real) / 2 + (fake + cond_fake + cond_wrong) / 3, binary cross-entropy.
    Mismatched pairs are real image k with caption k + 1, where `wrong` (B - 1,) says the captions differ. `hard`:
    (sentences (B, D), valid (B,)) of each caption's hard negative (two interchangeable words swapped); real image k
    with its own caption's negative joins the mismatched pairs where valid. `joint`: see `d_features`.
    `contrastive`: adds that term on the real images."""
    h_real, h_fake = d_features(D, real, fake.detach(), joint)
    cond_real = bce(D.COND_DNET(h_real, sentence), 1.0)
    cond_fake = bce(D.COND_DNET(h_fake, sentence), 0.0)
    wrong_logits = D.COND_DNET(h_real[:-1], sentence[1:])
    if hard is not None:
        wrong_logits = torch.cat([wrong_logits, D.COND_DNET(h_real, hard[0])])
        wrong = torch.cat([wrong, hard[1].to(wrong.dtype)])
    cond_wrong = (F.binary_cross_entropy_with_logits(wrong_logits, torch.zeros_like(wrong_logits), reduction="none")
                  * wrong).sum() / wrong.sum().clamp(min=1)
    uncond_real, uncond_fake = bce(D.UNCOND_DNET(h_real), 1.0), bce(D.UNCOND_DNET(h_fake), 0.0)
    loss = (uncond_real + cond_real) / 2 + (uncond_fake + cond_fake + cond_wrong) / 3
    stats = {"cond_real": cond_real.detach(), "cond_fake": cond_fake.detach(), "cond_wrong": cond_wrong.detach(),
             "uncond_real": uncond_real.detach(), "uncond_fake": uncond_fake.detach()}
    if contrastive is not None:
        itd = contrastive_term(D, h_real, sentence, contrastive)
        loss = loss + itd
        stats["contrastive"] = itd.detach()
    return loss, stats


def g_stage_loss(D, fake: torch.Tensor, sentence: torch.Tensor, real: torch.Tensor | None = None,
                 contrastive: Contrastive | None = None) -> torch.Tensor:
    """One stage's adversarial G loss: unconditional + conditional logits of the fakes towards 'real'. With `real`,
    D sees the fakes in one batch with those reals, as in its own step (`d_features` joint). `contrastive`: adds
    that term on the fakes (each fake's D features must pick its own sentence from the batch's)."""
    h = D(fake) if real is None else d_features(D, real, fake, joint=True)[1]
    loss = bce(D.UNCOND_DNET(h), 1.0) + bce(D.COND_DNET(h, sentence), 1.0)
    return loss if contrastive is None else loss + contrastive_term(D, h, sentence, contrastive)


def r1_penalty(D, real: torch.Tensor, sentence: torch.Tensor) -> torch.Tensor:
    """R1 (Mescheder et al. 2018) on one stage: the squared norm of the gradient of D's unconditional plus
    conditional logit with respect to the real images, averaged over the batch; fp32 (a double backward)."""
    real = real.detach().float().requires_grad_(True)
    with torch.autocast(device_type=real.device.type, enabled=False):
        h = D(real)
        logits = D.UNCOND_DNET(h) + D.COND_DNET(h, sentence.float())
        (grad,) = torch.autograd.grad(logits.sum(), real, create_graph=True)
    return grad.square().sum([1, 2, 3]).mean()
