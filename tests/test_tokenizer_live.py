#!/usr/bin/python3
"""test_tokenizer_live.py TOK_TOOL: the tokenizer (common/tokenizer.c) id for id against the `tokenizers` package,
and --chat against transformers' apply_chat_template. Needs the Python environment ./run test makes
(build/.venv with the pinned packages of tests/requirements.txt; QD_TOK_PYTHON or QD_PYTHON names another interpreter);
without it the test is skipped (exit 77) with a message.

On tests/data/tok_corpus.json, plus texts for the added-token options and 1000 seeded random strings:
- each fixture's tokenizer.json (Qwen3's layout, merges as "a b" strings): ids and decoded text;
- a tokenizer trained here with Qwen's pre-tokenizer (merges written as pairs, as tokenizers writes them),
  with Qwen's special tokens and added tokens using single_word, lstrip, rstrip and normalized: true;
- the same with its merges rewritten as "a b" strings, and with ignore_merges;
- a GPT-2-style one: no normalizer, ByteLevel with add_prefix_space and its own regex;
- the fuzz target's seeds (tests/fuzz/corpus/tokenizer, fixture-* aside: unk_token with fuse_unk, a String split with Removed).
--chat: the text and ids transformers renders for one user message with add_generation_prompt=True, with
Qwen3's template (the fixtures'), a Qwen2.5-style one (a default system message), Qwen3-Thinking-2507's
ending (<think>\\n after the assistant turn opens), and ChatML templates that write the generation prompt as
text rather than a literal.
"""
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
if "--in-venv" not in sys.argv:  # skipped (exit 77) without the interpreter; test_tokenizer.py checks the ids
    sys.path.insert(0, HERE)
    from qd_check import require_python

    py = require_python("tokenizers, transformers, jinja2", env=("QD_TOK_PYTHON", "QD_PYTHON"))
    os.execv(py, [py, os.path.abspath(__file__), *sys.argv[1:], "--in-venv"])

import tokenizers  # noqa: E402
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers  # noqa
from transformers import AutoTokenizer  # noqa: E402

sys.path.insert(0, HERE)
from qd_check import FX, check, finish  # noqa: E402

TOOL = sys.argv[1]
QWEN_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")
tmp = tempfile.mkdtemp(prefix="qd_tokenizer_live.")
corpus = json.load(open(os.path.join(HERE, "data", "tok_corpus.json"), encoding="utf-8"))
print(f"tokenizers {tokenizers.__version__}")

# texts for the added-token options of the trained tokenizer
corpus += ["say hello world", "sayhello hello! hello_x 1hello", "a   lst   b", "rstr   c\n d", "rstrlst",
           "Cafe\u0301 and Caf\u00e9 and CAF\u00c9", "x<|im_end|>lst hello<|im_start|>rstr  ", "hello"]
rng = random.Random(13)
alphabet = ("abcXYZ019 '\t\n\r\u00a0\u3000\u00e9e\u0301\u1100\u1161\u4e2d\u6587\U0001F600\u200d\U0001F3FD"
            "\u0085\u180e\u2028.,!?-_'sSTDdlLmMvV<|im_end|>hello")
corpus += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))) for _ in range(400)]
# code points from the blocks that stress NFC, the regex's classes and the byte-level mapping
blocks = [(0x20, 0x7E), (0xA0, 0x17F), (0x300, 0x36F), (0x370, 0x3FF), (0x590, 0x6FF), (0x900, 0x97F), (0x1100, 0x11FF),
          (0x1E00, 0x1EFF), (0x2000, 0x206F), (0x3000, 0x30FF), (0x4E00, 0x4E80), (0xAC00, 0xAC40), (0xFF00, 0xFFEF),
          (0x1F300, 0x1F6FF), (0x1F900, 0x1F9FF), (0x20000, 0x20040), (0x0, 0x1F)]
corpus += ["".join(chr(rng.randint(*rng.choice(blocks))) for _ in range(rng.randint(1, 30))) for _ in range(600)]
corpus_file = os.path.join(tmp, "corpus.json")
json.dump(corpus, open(corpus_file, "w"), ensure_ascii=True)


def c_tokenizer(path):
    p = subprocess.run([TOOL, "encode", path, corpus_file], capture_output=True, text=True)
    return json.loads(p.stdout) if p.returncode == 0 else p.stderr.strip()


def compare(name, path, merges_apply=True):
    ref = Tokenizer.from_file(path)
    got = c_tokenizer(path)
    if isinstance(got, str):
        check(False, f"{name}: the C tokenizer loads it ({got})")
        return
    want = [e.ids for e in ref.encode_batch(corpus)]
    bad = [i for i in range(len(corpus)) if got[i]["ids"] != want[i]]
    check(not bad, f"{name}: {len(corpus)} texts, the same ids as tokenizers" +
          "".join(f"\n    {corpus[i]!r}: {got[i]['ids']} vs {want[i]}" for i in bad[:3]))
    dec = [i for i in range(len(corpus)) if got[i]["decoded"] != ref.decode(want[i], skip_special_tokens=False)]
    check(not dec, f"{name}: the same decoded text" +
          "".join(f"\n    {ref.decode(want[i], skip_special_tokens=False)!r} vs {got[i]['decoded']!r}" for i in dec[:3]))
    if merges_apply:
        check(sum(len(w) for w in want) < sum(len(c.encode()) for c in corpus), f"{name}: merges apply")


for fx in sorted(os.listdir(FX)):
    if os.path.exists(os.path.join(FX, fx, "tokenizer.json")):
        compare(f"fixture {fx}", os.path.join(FX, fx, "tokenizer.json"))


def trained(pre, normalizer, vocab=1500):
    tok = Tokenizer(models.BPE())
    if normalizer:
        tok.normalizer = normalizer
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus[:60] * 3, trainer=trainer)
    return tok


qwen_pre = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN_PATTERN), behavior="isolated", invert=False),
                                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
tok = trained(qwen_pre, normalizers.NFC())
tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in
                        ("<|endoftext|>", "<|im_start|>", "<|im_end|>")])
tok.add_tokens([AddedToken("<think>", normalized=False), AddedToken("hello", single_word=True, normalized=False),
                AddedToken("lst", lstrip=True, normalized=False), AddedToken("rstr", rstrip=True, normalized=False),
                AddedToken("Caf\u00e9", normalized=True)])
path = os.path.join(tmp, "qwen_pairs.json")
tok.save(path)
saved = json.load(open(path, encoding="utf-8"))
check(isinstance(saved["model"]["merges"][0], list), "the trained tokenizer's merges are written as pairs")
compare("trained, Qwen's pre-tokenizer, pair merges", path)

saved["model"]["merges"] = [" ".join(m) for m in saved["model"]["merges"]]
path = os.path.join(tmp, "qwen_strings.json")
json.dump(saved, open(path, "w"), ensure_ascii=False)
compare("trained, Qwen's pre-tokenizer, \"a b\" merges", path)

saved["model"]["ignore_merges"] = True
path = os.path.join(tmp, "qwen_ignore_merges.json")
json.dump(saved, open(path, "w"), ensure_ascii=False)
compare("trained, ignore_merges", path)

gpt2 = trained(pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True), None)
path = os.path.join(tmp, "gpt2.json")
gpt2.save(path)
compare("trained, GPT-2's ByteLevel pre-tokenizer with a prefix space", path)

# the fuzz seeds: unk_token with fuse_unk (a byte missing from the vocab), a String pattern with Removed, a
# Sequence normalizer, lstrip/rstrip and a normalized single_word added token, GPT-2's pre-tokenizer with pairs
seeds = os.path.join(HERE, "fuzz", "corpus", "tokenizer")
for f in sorted(x for x in os.listdir(seeds) if not x.startswith("fixture-")):  # the fixtures are checked above
    compare(f"seed {f}", os.path.join(seeds, f), merges_apply=False)  # 8 merges: too few to shorten the corpus

# --- --chat against transformers --------------------------------------------------------------------------------
GQ = os.path.join(FX, "gqa_tied")
qwen3 = json.load(open(os.path.join(GQ, "tokenizer_config.json"), encoding="utf-8"))["chat_template"]
qwen25 = (
    "{%- if messages[0]['role'] == 'system' %}\n"
    "    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n"
    "{%- else %}\n"
    "    {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}\n"
    "{%- endif %}\n"
    "{%- for message in messages %}\n"
    "    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}\n")
thinking = qwen3[:qwen3.index("{%- if add_generation_prompt %}")] + \
    "{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n<think>\\n' }}\n{%- endif %}"
check(thinking != qwen3 and "enable_thinking" in qwen3, "the Thinking-2507 variant replaces Qwen3's ending")
# ChatML written as text, not literals, with an apostrophe in a comment and in text outside the tags
raw_chatml = ("{#- ChatML: it's the format Qwen uses -#}\n"
              "{%- for message in messages %}\n"
              "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}\n"
              "{%- endfor %}\n"
              "{%- if add_generation_prompt %}\n<|im_start|>assistant\n{% endif %}")
raw_one_line = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
                "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
prompts = ["Hello!", "Two\nlines and a trailing newline\n", "quotes ' \" and {{ jinja }} {% raw %} in the text",
           "<think>already special</think> \U0001F600 caf\u00e9"]
for name, template in (("Qwen3", qwen3), ("Qwen2.5-style (default system message)", qwen25),
                       ("Qwen3-Thinking-2507's ending", thinking), ("ChatML as text, multi-line", raw_chatml),
                       ("ChatML as text, one line", raw_one_line)):
    d = os.path.join(tmp, "chat_" + str(abs(hash(name))))
    os.makedirs(d)
    for f in ("config.json", "tokenizer.json"):
        shutil.copy(os.path.join(GQ, f), d)
    cfg = json.load(open(os.path.join(GQ, "tokenizer_config.json"), encoding="utf-8"))
    cfg["chat_template"] = template
    json.dump(cfg, open(os.path.join(d, "tokenizer_config.json"), "w"), ensure_ascii=False)
    hf = AutoTokenizer.from_pretrained(d)
    for p in prompts:
        msgs = [{"role": "user", "content": p}]
        text = hf.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        ids = hf(text, add_special_tokens=False)["input_ids"]
        pf = os.path.join(d, "prompt.txt")
        open(pf, "w", encoding="utf-8").write(p)
        r = subprocess.run([TOOL, "chat", d, pf], capture_output=True, text=True)
        got = json.loads(r.stdout) if r.returncode == 0 else {}
        check(got.get("text") == text and got.get("ids") == ids,
              f"--chat, {name}, {p[:24]!r}: transformers' text {text!r} and ids" +
              (f"; got {got.get('text')!r} {r.stderr.strip()}" if got.get("text") != text else ""))

shutil.rmtree(tmp)
finish()
