"""Text tokenizers shared by the families: a byte-level BPE trained on a dataset's captions."""
