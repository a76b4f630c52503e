"""Word attention maps as pictures: per sample one row, the image, then for each word the image under that
word's attention over its regions, the word written beneath. DAMSM's authors could judge it only this way;
t2i writes one at every DAMSM snapshot and for `t2i generate --attention`."""

from __future__ import annotations

import torch
import torch.nn.functional as F

LABEL = 14          # pixels of the word strip under each tile
MIN_TILE = 96       # small images are enlarged (nearest) so the words stay legible


def attention_rows(images: torch.Tensor, words: list[list[str]], attn: list[torch.Tensor]):
    """A PIL image: images uint8 (K, 3, H, W); words[k] the sample's words; attn[k] (len(words[k]), h, w) maps
    that each sum to 1 over regions (shown scaled to their own maximum)."""
    from PIL import Image, ImageDraw

    K, _, H, W = images.shape
    scale = max(1, -(-MIN_TILE // H))
    th, tw = H * scale, W * scale
    cols = 1 + max((len(w) for w in words), default=0)
    canvas = Image.new("RGB", (cols * tw, K * (th + LABEL)), "white")
    draw = ImageDraw.Draw(canvas)
    for k in range(K):
        img = F.interpolate(images[k:k + 1].float(), size=(th, tw), mode="nearest")[0]      # (3, th, tw)
        tiles = [img]
        if len(words[k]):
            a = F.interpolate(attn[k][None].float(), size=(th, tw), mode="bilinear", align_corners=False)[0]
            a = a / a.flatten(1).amax(1).clamp(min=1e-12)[:, None, None]                    # (T, th, tw) in [0, 1]
            heat = torch.stack([a * 255, a * 160, torch.zeros_like(a)], 1)                   # warm overlay
            tiles += list(0.35 * img[None] + 0.65 * heat)
        for c, tile in enumerate(tiles):
            pixels = tile.clamp(0, 255).byte().permute(1, 2, 0).numpy()
            canvas.paste(Image.fromarray(pixels), (c * tw, k * (th + LABEL)))
            if c:
                draw.text((c * tw + 2, k * (th + LABEL) + th + 1), words[k][c - 1][: tw // 6], fill="black")
    return canvas
