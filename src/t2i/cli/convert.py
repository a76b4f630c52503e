"""`t2i convert`: other projects' checkpoints into t2i snapshots (safetensors + JSON) that every command loads."""

from __future__ import annotations

from t2i.cli import HelpFormatter


def add_parser(sub) -> None:
    """Register `t2i convert compvis-ldm|attngan`."""
    p = sub.add_parser("convert", help="convert another project's checkpoint into a t2i snapshot",
                       description="Convert another project's checkpoint into a t2i snapshot, once: the result "
                                   "loads like any run (--model DIR) and nothing is unpickled.")
    kinds = p.add_subparsers(dest="kind", required=True, metavar="KIND")
    c = kinds.add_parser(
        "compvis-ldm", formatter_class=HelpFormatter,
        help="a CompVis latent-diffusion text2img model.ckpt (with its YAML and the bert-base-uncased vocab.txt)",
        description="Read a CompVis LDM text2img checkpoint (torch.load with weights_only; a checkpoint that "
                    "pickles classes gets the command that extracts its weights), map its UNet, KL first stage and "
                    "BERT embedder onto t2i's modules (every tensor checked: a missing, unexpected or misshapen one "
                    "is an error, never a partial load), and write a snapshot `t2i generate --model OUT` samples.")
    c.add_argument("ckpt", help="the CompVis model.ckpt (state dict under 'state_dict')")
    c.add_argument("yaml", help="its config, e.g. configs/latent-diffusion/txt2img-1p4B-eval.yaml")
    c.add_argument("--vocab", required=True, help="bert-base-uncased vocab.txt, a local file (the tokenizer is not "
                                                  "inside the checkpoint)")
    c.add_argument("--out", required=True, help="the snapshot directory to write")
    c.set_defaults(func=run)
    a = kinds.add_parser(
        "attngan", formatter_class=HelpFormatter,
        help="AttnGAN's published DAMSM encoders (+ generator) and its captions.pickle vocabulary",
        description="Read AttnGAN's text_encoder200.pth and image_encoder200.pth (and netG_epoch_600.pth) with "
                    "torch.load(weights_only=True) and the vocabulary of its captions.pickle without running code; "
                    "every tensor is checked by name and shape. Writes a DAMSM snapshot (`t2i train attngan --damsm "
                    "OUT`) or, with --generator, an AttnGAN snapshot (`t2i generate --model OUT`).")
    a.add_argument("--text_encoder", required=True, help="DAMSM text encoder state dict (text_encoder200.pth)")
    a.add_argument("--image_encoder", required=True, help="DAMSM image encoder state dict (image_encoder200.pth)")
    a.add_argument("--captions", required=True, help="AttnGAN's captions.pickle (its vocabulary, ixtoword)")
    a.add_argument("--generator", help="G_NET state dict (netG_epoch_600.pth); without it a DAMSM snapshot is written")
    a.add_argument("--words", type=int, default=18, help="words per caption the encoders read (AttnGAN: 18 for "
                                                         "CUB, 12 for COCO)")
    a.add_argument("--out", required=True, help="the snapshot directory to write")
    a.set_defaults(func=run_attngan)


def run_attngan(args) -> int:
    from pathlib import Path

    from t2i.io import prepare_output
    from t2i.models.attngan.original import convert_attngan

    prepare_output(Path(args.out).parent, "the folder of --out", directory=True)
    out = convert_attngan(args.text_encoder, args.image_encoder, args.captions, args.out, args.generator, args.words)
    print(f"wrote {out}")
    return 0


def run(args) -> int:
    from pathlib import Path

    from t2i.io import prepare_output
    from t2i.models.ldm.compvis import convert_compvis_ldm

    prepare_output(Path(args.out).parent, "the folder of --out", directory=True)  # before the long read
    print(f"wrote {convert_compvis_ldm(args.ckpt, args.yaml, args.vocab, args.out)}")
    return 0
