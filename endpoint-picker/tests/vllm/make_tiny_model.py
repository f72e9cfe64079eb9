#!/usr/bin/env python3
"""Builds kvpick's tiny test model for the real-vLLM tests, deterministically and offline.

A Llama with random weights (fixed seed, a few layers of width 128) and a byte-level BPE tokenizer
trained on `corpus.txt` beside this script, with ChatML special tokens and `chat_template.jinja` in
its `tokenizer_config.json`. vLLM serves it on CPU, caches its prefixes, publishes KV events and
reports `cached_tokens`; the text it generates is noise, which no test reads.

Run with the vLLM venv's python (it needs torch, transformers and tokenizers):
    make_tiny_model.py --out DIR
Skips the work when DIR already holds a model built from the same script, corpus and template.
"""

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")

HERE = os.path.dirname(os.path.abspath(__file__))
INPUTS = ["make_tiny_model.py", "corpus.txt", "chat_template.jinja"]
SEED = 1616
VOCAB = 1024
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def inputs_digest():
    h = hashlib.sha256()
    for name in INPUTS:
        with open(os.path.join(HERE, name), "rb") as f:
            h.update(name.encode() + b"\0" + f.read() + b"\0")
    return h.hexdigest()


def build_tokenizer(out):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    with open(os.path.join(HERE, "corpus.txt"), encoding="utf-8") as f:
        lines = f.read().splitlines()
    tok.train_from_iterator(lines, trainer=trainer)
    tok.save(os.path.join(out, "tokenizer.json"))
    with open(os.path.join(HERE, "chat_template.jinja"), encoding="utf-8") as f:
        template = f.read()
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "model_max_length": 4096,
        "clean_up_tokenization_spaces": False,
        "chat_template": template,
        "added_tokens_decoder": {
            str(tok.token_to_id(t)): {"content": t, "lstrip": False, "normalized": False,
                                      "rstrip": False, "single_word": False, "special": True}
            for t in SPECIAL
        },
    }
    with open(os.path.join(out, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, ensure_ascii=False)
        f.write("\n")
    return tok


def build_model(out, tok):
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(SEED)
    config = LlamaConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=4096,
        bos_token_id=tok.token_to_id("<|endoftext|>"),
        eos_token_id=tok.token_to_id("<|im_end|>"),
        pad_token_id=tok.token_to_id("<|endoftext|>"),
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    model = LlamaForCausalLM(config)
    model.eval()
    model.save_pretrained(out, safe_serialization=True)
    GenerationConfig(eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id).save_pretrained(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="directory for the model (created)")
    args = ap.parse_args()
    digest = inputs_digest()
    stamp = os.path.join(args.out, "kvpick-inputs.sha256")
    try:
        with open(stamp, encoding="utf-8") as f:
            if f.read().strip() == digest:
                return 0
    except FileNotFoundError:
        pass
    parent = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tiny-model-", dir=parent)
    try:
        tok = build_tokenizer(tmp)
        build_model(tmp, tok)
        with open(os.path.join(tmp, "kvpick-inputs.sha256"), "w", encoding="utf-8") as f:
            f.write(digest + "\n")
        shutil.rmtree(args.out, ignore_errors=True)
        os.replace(tmp, args.out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"tiny model written to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
