"""Pad a saved tokenizer with placeholder tokens up to a model's vocabulary size.

Benchmarks of random-weight models on a machine without the model's own tokenizer borrow a
smaller one (SmolLM2's 49,152 tokens for the Qwen3 shape's 151,936). A random model then
emits ids the tokenizer has no text for, and the server holds a token without text back until
text follows it (engine/output_text.py), so streams stall or end with no chunk. Each padded id
gets the text "<xID>": an added token that plain prompt text never contains, so prompts encode
as before.

    python bench/extend_tokenizer.py SRC_DIR DST_DIR VOCAB_SIZE
"""

from __future__ import annotations

import sys

from tokenizers import AddedToken
from transformers import AutoTokenizer


def main() -> None:
    src, dst, vocab = sys.argv[1], sys.argv[2], int(sys.argv[3])
    tok = AutoTokenizer.from_pretrained(src, local_files_only=True)
    n = len(tok)
    tok.add_tokens([AddedToken(f"<x{i}>", special=False, normalized=False)
                    for i in range(n, vocab)])
    assert len(tok) >= vocab, (len(tok), vocab)
    tok.save_pretrained(dst)
    print(f"{src}: {n} tokens -> {dst}: {len(tok)}")


if __name__ == "__main__":
    main()
