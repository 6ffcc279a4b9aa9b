#!/usr/bin/env python3
"""Writes each fixture's tokenizer.json and tokenizer_config.json, and the ids the `tokenizers` package gives
for the test corpus with them (tests/data/tok_expected.json).

The files have the layout Qwen3's checkpoints ship (normalizer NFC; pre-tokenizer Split with Qwen's regex,
Isolated, then ByteLevel without prefix space or regex; ByteLevel post-processor and decoder; BPE with merges
written as "a b" strings; Qwen3's 26 added tokens with their flags; Qwen3's chat template) with a vocab that
fits the fixture: the 256 byte tokens and merges trained by tokenizers' BpeTrainer on TRAINING_TEXT below,
then the added tokens right after them, leaving 8 ids unused below the model's vocab_size (Qwen3-0.6B's
tokenizer also defines fewer ids, 151669, than its embedding has rows, 151936).

    python3 -m venv /tmp/v && /tmp/v/bin/pip install tokenizers==0.23.3
    /tmp/v/bin/python tools/make_fixture_tokenizers.py fixtures/gqa_tied fixtures/mha_untied \\
        fixtures/knorm_extreme fixtures/long_prompt

tests/test_tokenizer.py checks the C tokenizer against tests/data/tok_expected.json, and against the package
itself where it is installed.
"""
import json
import os
import sys

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QWEN_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")
UNUSED_IDS = 8

# Qwen3's added tokens in id order, with their 'special' flag (tokenizer.json and tokenizer_config.json).
ADDED = [("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True), ("<|object_ref_start|>", True),
         ("<|object_ref_end|>", True), ("<|box_start|>", True), ("<|box_end|>", True), ("<|quad_start|>", True),
         ("<|quad_end|>", True), ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
         ("<|image_pad|>", True), ("<|video_pad|>", True), ("<tool_call>", False), ("</tool_call>", False),
         ("<|fim_prefix|>", False), ("<|fim_middle|>", False), ("<|fim_suffix|>", False), ("<|fim_pad|>", False),
         ("<|repo_name|>", False), ("<|file_sep|>", False), ("<tool_response>", False), ("</tool_response>", False),
         ("<think>", False), ("</think>", False)]

TRAINING_TEXT = """\
The quick brown fox jumps over the lazy dog. A tokenizer splits text into pieces, and byte-level BPE merges
the most frequent pairs of symbols first: the, and, ing, tion, er, re, in, on, at, en, es, ed, or, it, is.
Numerical divergence between two implementations of the same model shows where the arithmetic differs:
the reference runs in fp32, the fused path in bf16, and the comparator looks at every intermediate tensor.
It's the layer's output that we compare; they'll say it's fine, we've seen you'd done it and we're ok.
def forward(self, hidden_states, attention_mask=None):
    residual = hidden_states
    hidden_states = self.input_layernorm(hidden_states)
    return residual + self.self_attn(hidden_states, attention_mask)
for (int i = 0; i < n; i++) { sum += a[i] * b[i]; } // accumulate in float, round once
SELECT name, COUNT(*) FROM users WHERE id > 10 GROUP BY name ORDER BY name;
{"model_type": "qwen3", "hidden_size": 1024, "num_hidden_layers": 28, "rope_theta": 1000000}
Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000 2024 3.14159 2.71828 1e-6 0x1F
Der schnelle braune Fuchs springt über den faulen Hund. Le renard brun rapide saute par-dessus le chien.
El zorro marrón rápido salta sobre el perro perezoso. Быстрая коричневая лиса прыгает через ленивую собаку.
敏捷的棕色狐狸跳过了懒狗。速い茶色の狐がのろまな犬を飛び越える。빠른 갈색 여우가 게으른 개를 뛰어넘는다.
Emoji and symbols: 😀 👍 ❤️ ✅ → ← ≤ ≥ ± × ÷ ∑ ∫ √ ∞ π α β γ δ λ μ σ ω.
In the beginning the layers were few and the heads were many; then came grouped-query attention, rotary
position embeddings, RMS normalisation and the SwiGLU feed-forward block, and the models grew deeper.
"""


def train(model_vocab):
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=model_vocab, min_frequency=1, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tok.train_from_iterator([TRAINING_TEXT] * 4, trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    if len(model["vocab"]) != model_vocab:
        sys.exit(f"training gave {len(model['vocab'])} tokens, wanted {model_vocab}: lengthen TRAINING_TEXT")
    return model


def qwen_layout(model, first_added):
    flags = {"single_word": False, "lstrip": False, "rstrip": False, "normalized": False}
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [dict(id=first_added + i, content=c, **flags, special=s) for i, (c, s) in enumerate(ADDED)],
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN_PATTERN}, "behavior": "Isolated", "invert": False},
            byte_level]},
        "post_processor": byte_level,
        "decoder": byte_level,
        "model": {
            "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
            "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
            "vocab": model["vocab"],
            # Qwen's files write each merge as one string; tokenizers' own writer gives pairs
            "merges": [m if isinstance(m, str) else " ".join(m) for m in model["merges"]],
        },
    }


def tokenizer_config(first_added, max_len, template):
    decoder = {str(first_added + i): {"content": c, "lstrip": False, "normalized": False, "rstrip": False,
                                      "single_word": False, "special": s} for i, (c, s) in enumerate(ADDED)}
    return {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": decoder,
        "additional_special_tokens": [c for c, s in ADDED[1:14]],
        "bos_token": None,
        "chat_template": template,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": max_len,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }


def main(dirs):
    template = open(os.path.join(ROOT, "tests/data/qwen3_chat_template.jinja"), encoding="utf-8").read()
    corpus = json.load(open(os.path.join(ROOT, "tests/data/tok_corpus.json"), encoding="utf-8"))
    expected = {}
    for d in dirs:
        cfg = json.load(open(os.path.join(d, "config.json")))
        first_added = cfg["vocab_size"] - UNUSED_IDS - len(ADDED)
        layout = qwen_layout(train(first_added), first_added)
        with open(os.path.join(d, "tokenizer.json"), "w", encoding="utf-8") as f:
            json.dump(layout, f, indent=2, ensure_ascii=False)
        with open(os.path.join(d, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            json.dump(tokenizer_config(first_added, cfg["max_position_embeddings"], template), f, indent=2,
                      ensure_ascii=False)
        tok = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
        for i, (c, _) in enumerate(ADDED):
            assert tok.token_to_id(c) == first_added + i, (d, c, tok.token_to_id(c))
        expected[os.path.basename(os.path.normpath(d))] = [tok.encode(s).ids for s in corpus]
        print(f"{d}: {first_added} BPE tokens ({len(layout['model']['merges'])} merges), "
              f"{len(ADDED)} added tokens at {first_added}..{first_added + len(ADDED) - 1}")
    import tokenizers
    with open(os.path.join(ROOT, "tests/data/tok_expected.json"), "w") as f:
        json.dump({"tokenizers_version": tokenizers.__version__, "ids": expected}, f, separators=(",", ":"))
        f.write("\n")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
