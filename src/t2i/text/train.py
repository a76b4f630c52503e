"""`t2i train bpe`: a byte-level BPE with BPE-dropout, trained on a dataset's captions.

Not a loop family (nothing is optimised by gradient): it reads every caption once and writes
`runs/NNNNN-<data>-bpe<vocab>/` with `tokenizer.json` (Hugging Face format) and `config.json`
(vocabulary size, dropout, languages, and the dataset's fingerprint, so a rebuilt dataset is noticed).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from t2i.errors import T2IError
from t2i.io import write_json_atomic
from t2i.text.bpe import BpeTokenizer, train_bpe

TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "config.json"


def add_args(p: argparse.ArgumentParser) -> None:
    """Options of `t2i train bpe`."""
    p.add_argument("--data", required=True, help="dataset folder or zip (t2i format) whose captions are read")
    p.add_argument("--vocab", type=int, default=16384, help="vocabulary size, special tokens included")
    p.add_argument("--dropout", type=float, default=0.1,
                   help="BPE-dropout used when a model trains with this tokenizer (never when sampling)")
    p.add_argument("--langs", default="en,ko", help="caption languages to learn, comma-separated")
    p.add_argument("--outdir", default="runs", help="parent directory of run directories")


def run(args: argparse.Namespace) -> int:
    """Train the BPE and write its run directory."""
    from t2i.data.dataset import ImageTextDataset, captions_by_image
    from t2i.data.loader import require_dataset
    from t2i.io import prepare_output
    from t2i.training.run import next_run_dir

    if args.vocab < 260:
        raise T2IError(f"--vocab {args.vocab} is too small: a byte-level BPE needs its 256 byte symbols "
                       "plus special tokens; use at least 260 (the paper uses 16384)")
    t0 = time.time()
    prepare_output(args.outdir, "the runs folder (--outdir)", directory=True)  # before training, not after
    require_dataset(args.data, "t2i train bpe")
    dataset = ImageTextDataset(args.data)
    dataset.require_captions("t2i train bpe")
    captions = [c for caps in captions_by_image(dataset, args.langs) for c in caps]
    tokenizer = train_bpe(captions, args.vocab, dropout=args.dropout)
    run_dir = next_run_dir(Path(args.outdir), f"{Path(args.data.rstrip('/')).stem}-bpe{args.vocab}")
    run_dir.mkdir(parents=True)
    (run_dir / TOKENIZER_FILE).write_text(tokenizer.to_json(), encoding="utf-8")
    lengths = [len(tokenizer.ids(c)) for c in captions[:2000]]
    meta = {"family": "bpe", "vocab": tokenizer.vocab_size, "dropout": args.dropout, "langs": args.langs,
            "data": args.data, "dataset": dataset.fingerprint(), "captions": len(captions),
            "mean_tokens": sum(lengths) / max(len(lengths), 1), "max_tokens": max(lengths, default=0)}
    write_json_atomic(run_dir / CONFIG_FILE, meta)
    print(f"BPE: {len(captions)} captions ({args.langs}) -> vocabulary {tokenizer.vocab_size} in "
          f"{time.time() - t0:.1f}s; {meta['mean_tokens']:.1f} tokens per caption on average, at most "
          f"{meta['max_tokens']}\nrun directory: {run_dir}")
    return 0


def load_bpe(path: str | Path) -> BpeTokenizer:
    """A tokenizer from a `t2i train bpe` run directory (or its tokenizer.json), with its dropout."""
    p = Path(path)
    run_dir = p.parent if p.name == TOKENIZER_FILE else p
    if not (run_dir / TOKENIZER_FILE).is_file():
        raise T2IError(f"{str(path)!r} holds no {TOKENIZER_FILE}; give a `t2i train bpe` run directory")
    try:
        spec = json.loads((run_dir / TOKENIZER_FILE).read_text(encoding="utf-8"))
        meta = json.loads((run_dir / CONFIG_FILE).read_text(encoding="utf-8")) if (run_dir / CONFIG_FILE).is_file() else {}
        return BpeTokenizer(spec, dropout=float(meta.get("dropout", 0.0)))
    except Exception as e:  # bad JSON, a missing key, or the tokenizers library's own error type
        raise T2IError(f"{run_dir / TOKENIZER_FILE} cannot be read ({type(e).__name__}: {e}); "
                       "retrain it with `t2i train bpe`") from None
