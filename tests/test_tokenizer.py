#!/usr/bin/python3
"""test_tokenizer.py TOK_TOOL QWEN3_DIFF: the tokenizer (common/tokenizer.c) without the `tokenizers` package.

- Each fixture's tokenizer.json encodes tests/data/tok_corpus.json to exactly the ids tokenizers gave
  (tests/data/tok_expected.json, written by tools/make_fixture_tokenizers.py), and decoding them gives the
  NFC form of each text back (round trip).
- --prompt end to end: the dump's input_ids are the tokenizer's ids; --chat wraps the text in the fixture's
  Qwen3 template (<|im_start|>user ... <|im_start|>assistant\\n) and its special tokens are single ids; the
  text report shows each side's top-5 next tokens with their text.
- Bad tokenizer.json and tokenizer_config.json files, bad prompts and misuse: one line on stderr, exit 2;
  without --prompt a bad tokenizer.json costs only the token text (one warning line, the run goes on).
tests/test_tokenizer_live.py holds the same tokenizer to the package itself and --chat to transformers.
"""
import json
import os
import shutil
import sys
import tempfile
import unicodedata

import h5py

import qd_check
from qd_check import FX, check, finish

TOOL, BIN = sys.argv[1], sys.argv[2]
DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
CORPUS = os.path.join(DATA, "tok_corpus.json")
corpus = json.load(open(CORPUS, encoding="utf-8"))
expected = json.load(open(os.path.join(DATA, "tok_expected.json")))["ids"]
tmp = tempfile.mkdtemp(prefix="qd_tokenizer.")


def encode(tokenizer_json, vocab=None):
    rc, out, err = qd_check.run(TOOL, "encode", tokenizer_json, CORPUS, *([str(vocab)] if vocab else []))
    return rc, (json.loads(out) if rc == 0 else None), err


# --- the committed ids of tokenizers, and the round trip --------------------------------------------------------
for fx, ids in sorted(expected.items()):
    rc, got, err = encode(os.path.join(FX, fx, "tokenizer.json"))
    check(rc == 0, f"{fx}: tokenizer.json loads ({err.strip()})")
    if rc:
        continue
    bad = [i for i, (g, x) in enumerate(zip(got, ids)) if g["ids"] != x]
    check(len(got) == len(corpus) and not bad,
          f"{fx}: {len(corpus)} corpus texts encode to tokenizers' ids" + (f"; differ: {bad[:8]}" if bad else ""))
    nfc = [i for i, g in enumerate(got) if g["decoded"] != unicodedata.normalize("NFC", corpus[i])]
    check(not nfc, f"{fx}: decoding gives every text back in NFC" + (f"; differ: {nfc[:8]}" if nfc else ""))
    check(any(len(x) > 1 and len(x) < len(c.encode()) for x, c in zip(ids, corpus)),
          f"{fx}: merges apply (fewer ids than bytes)")

# --- --prompt and --chat end to end ------------------------------------------------------------------------------
GQ = os.path.join(FX, "gqa_tied")
text = "The quick brown fox, <think>it's 42</think> 😀"
pfile = os.path.join(tmp, "prompt.txt")
open(pfile, "w", encoding="utf-8").write(text)
cf = os.path.join(tmp, "one.json")
json.dump([text], open(cf, "w"))
rc, out, err = qd_check.run(TOOL, "encode", os.path.join(GQ, "tokenizer.json"), cf)
want = json.loads(out)[0]["ids"] if rc == 0 else None
dump = os.path.join(tmp, "p.h5")
rc, out, err = qd_check.run(BIN, "--model", GQ, "--prompt", "@" + pfile, "--backends", "ref", "--dump", dump)
check(rc == 0 and want and list(h5py.File(dump)["input_ids"][:]) == want,
      f"--prompt @FILE: the dump's input_ids are the tokenizer's {len(want or [])} ids ({err.strip()})")
rc, out2, err = qd_check.run(BIN, "--model", GQ, "--prompt", text, "--backends", "ref")
check(rc == 0 and f"T={len(want or [])} tokens" in out2 and "next token" in out2 and "'" in out2,
      f"--prompt TEXT: the same {len(want or [])} tokens, the next token with its text: {out2.strip()}")

rc, out, err = qd_check.run(TOOL, "chat", GQ, pfile)
chat = json.loads(out) if rc == 0 else {}
check(chat.get("text") == "<|im_start|>user\n" + text + "<|im_end|>\n<|im_start|>assistant\n",
      f"--chat: Qwen3's template gives <|im_start|>user\\n...<|im_end|>\\n<|im_start|>assistant\\n ({err.strip()})")
cfg = json.load(open(os.path.join(GQ, "tokenizer_config.json")))
special = {v["content"]: int(k) for k, v in cfg["added_tokens_decoder"].items()}
ids = chat.get("ids", [])
check(ids[:1] == [special["<|im_start|>"]] and ids.count(special["<|im_end|>"]) == 1 and
      ids.count(special["<|im_start|>"]) == 2 and special["<think>"] in ids,
      "--chat: <|im_start|>, <|im_end|> and <think> are single ids")
dump2 = os.path.join(tmp, "c.h5")
rc, out, err = qd_check.run(BIN, "--model", GQ, "--prompt", "@" + pfile, "--chat", "--backends", "ref", "--dump", dump2)
check(rc == 0 and list(h5py.File(dump2)["input_ids"][:]) == ids, f"--chat end to end: the dump holds those ids ({err.strip()})")

rc, out, err = qd_check.run(BIN, "--model", GQ, "--prompt", text, "--backends", "ref,emu")
lines = out.splitlines()
at = next((i for i, l in enumerate(lines) if l.startswith("next token after the prompt")), -1)
check(rc == 0 and at >= 0 and lines[at + 1].split()[0] == "ref" and lines[at + 2].split()[0] == "emu" and
      lines[at + 1].count("'") == 10, "ref vs emu: the report shows each side's top-5 next tokens with their text")
rc, out, err = qd_check.run(BIN, "--model", GQ, "--tokens", "@" + os.path.join(GQ, "prompt.txt"), "--backends", "ref",
                            "--summary")
check(rc == 0 and "top-5 after position" in out and "their text:" in out and
      out.split("their text:")[1].split("\n")[0].count("'") == 10, "--summary: the top-5 and their text")

# --- bad input ----------------------------------------------------------------------------------------------------
good = json.load(open(os.path.join(GQ, "tokenizer.json"), encoding="utf-8"))


def model_dir(name, tokenizer=None, raw=None, config=None, chat_template=None, vocab_size=None):
    d = os.path.join(tmp, name)
    os.makedirs(d)
    for f in ("model.safetensors", "tokenizer_config.json"):
        os.symlink(os.path.join(GQ, f), os.path.join(d, f))
    c = json.load(open(os.path.join(GQ, "config.json")))
    if vocab_size:
        c["vocab_size"] = vocab_size
    json.dump(c, open(os.path.join(d, "config.json"), "w"))
    if raw is not None:
        open(os.path.join(d, "tokenizer.json"), "wb").write(raw)
    elif tokenizer is not None:
        json.dump(tokenizer, open(os.path.join(d, "tokenizer.json"), "w"))
    if config is not None:
        os.unlink(os.path.join(d, "tokenizer_config.json"))
        open(os.path.join(d, "tokenizer_config.json"), "w").write(config)
    return d


def variant(edit):
    t = json.loads(json.dumps(good))
    edit(t)
    return t


def set_path(t, path, value):
    for k in path[:-1]:
        t = t[k]
    t[path[-1]] = value


def one_line_exit2(args, fragment, what):
    rc, out, err = qd_check.run(BIN, *args)
    check(rc == 2 and err.count("\n") == 1 and fragment in err, f"{what}: exit 2, one line naming it: {err.strip()}")


first_merge = good["model"]["merges"][0]
bad_files = [
    ("missing", None, b"", "tokenizer.json: cannot open"),
    ("not JSON", None, b"{\"model\": ", "not valid JSON"),
    ("an array", None, b"[]", "expected a JSON object"),
    ("WordPiece", variant(lambda t: set_path(t, ["model", "type"], "WordPiece")), None, "only BPE"),
    ("merge is a number", variant(lambda t: t["model"]["merges"].__setitem__(3, 7)), None, "model.merges[3]"),
    ("merge without a space", variant(lambda t: t["model"]["merges"].__setitem__(2, "abc")), None, "model.merges[2]"),
    ("merge of three", variant(lambda t: t["model"]["merges"].__setitem__(2, ["a", "b", "c"])), None,
     "model.merges[2]"),
    ("merge token not in vocab", variant(lambda t: t["model"]["merges"].__setitem__(4, "Ġ zzzz")), None,
     "'zzzz' is not in the vocab"),
    ("merged token not in vocab", variant(lambda t: t["model"]["merges"].append("x q")), None,
     "merged token 'xq' is not in the vocab"),
    ("merges not an array", variant(lambda t: set_path(t, ["model", "merges"], {})), None, "'model.merges'"),
    ("vocab id out of range", variant(lambda t: set_path(t, ["model", "vocab", "zzz"], 600)), None,
     "'zzz' has id 600, outside 0..511"),
    ("negative vocab id", variant(lambda t: set_path(t, ["model", "vocab", "zzz"], -1)), None, "has id -1"),
    ("vocab id not an integer", variant(lambda t: set_path(t, ["model", "vocab", "zzz"], "7")), None,
     "'zzz' has a string"),
    ("added token id out of range", variant(lambda t: set_path(t, ["added_tokens", 0, "id"], 512)), None,
     "added token '<|endoftext|>' has id 512"),
    ("NFKC normalizer", variant(lambda t: set_path(t, ["normalizer"], {"type": "NFKC"})), None, "'normalizer'"),
    ("no ByteLevel step", variant(lambda t: set_path(t, ["pre_tokenizer", "pretokenizers"],
                                                     t["pre_tokenizer"]["pretokenizers"][:1])), None,
     "no ByteLevel step"),
    ("a regex that does not compile", variant(lambda t: set_path(t, ["pre_tokenizer", "pretokenizers", 0, "pattern"],
                                                                 {"Regex": "(\\p{L}"})), None, "does not compile"),
    ("MergedWithNext", variant(lambda t: set_path(t, ["pre_tokenizer", "pretokenizers", 0, "behavior"],
                                                  "MergedWithNext")), None, "behavior"),
    ("no decoder", variant(lambda t: set_path(t, ["decoder"], None)), None, "decoder.type"),
    ("byte_fallback", variant(lambda t: set_path(t, ["model", "byte_fallback"], True)), None, "byte_fallback"),
    ("dropout", variant(lambda t: set_path(t, ["model", "dropout"], 0.1)), None, "model.dropout"),
    ("truncation", variant(lambda t: set_path(t, ["truncation"], {"max_length": 8})), None, "'truncation'"),
    ("TemplateProcessing", variant(lambda t: set_path(t, ["post_processor"], {"type": "TemplateProcessing"})), None,
     "post_processor"),
]
for i, (what, tok, raw, fragment) in enumerate(bad_files):
    d = model_dir(f"bad{i}", tokenizer=tok, raw=raw or None)  # neither: no tokenizer.json at all
    one_line_exit2(["--model", d, "--prompt", "hello", "--backends", "ref"], fragment, f"tokenizer.json {what}")
check(first_merge in good["model"]["merges"], "the bad files were edited copies")

# the model's vocab_size bounds every id of the tokenizer
d = model_dir("small_vocab", tokenizer=good, vocab_size=400)
one_line_exit2(["--model", d, "--prompt", "hello", "--backends", "ref"], "has id", "a tokenizer larger than the model")

# without --prompt a bad tokenizer.json only costs the token text
d = model_dir("warn", raw=b"not json")
rc, out, err = qd_check.run(BIN, "--model", d, "--tokens", "1,2,3", "--backends", "ref")
check(rc == 0 and err.count("\n") == 1 and "warning" in err and "not valid JSON" in err,
      f"--tokens with a bad tokenizer.json: one warning line, exit 0: {err.strip()}")

# chat templates
d = model_dir("nochat", tokenizer=good, config=json.dumps({"tokenizer_class": "Qwen2Tokenizer"}))
one_line_exit2(["--model", d, "--prompt", "hi", "--chat"], "no field 'chat_template'", "--chat without a template")
d = model_dir("llama", tokenizer=good, config=json.dumps(
    {"chat_template": "{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}"}))
one_line_exit2(["--model", d, "--prompt", "hi", "--chat"], "not ChatML", "--chat with a template that is not ChatML")
d = model_dir("nogen", tokenizer=good, config=json.dumps(
    {"chat_template": "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"}))
one_line_exit2(["--model", d, "--prompt", "hi", "--chat"], "add_generation_prompt", "--chat without a generation prompt")
d = model_dir("badcfg", tokenizer=good, config="{")
one_line_exit2(["--model", d, "--prompt", "hi", "--chat"], "not valid JSON", "--chat with a broken tokenizer_config.json")

# prompts and misuse
bad_utf8 = os.path.join(tmp, "latin1.txt")
open(bad_utf8, "wb").write("caf\xe9".encode("latin-1"))
one_line_exit2(["--model", GQ, "--prompt", "@" + bad_utf8], "not valid UTF-8 at byte 3", "a prompt file in Latin-1")
one_line_exit2(["--model", GQ, "--prompt", ""], "no tokens", "an empty prompt")
one_line_exit2(["--model", GQ, "--prompt", "@" + os.path.join(tmp, "none.txt")], "cannot open", "a missing prompt file")
one_line_exit2(["--model", GQ, "--prompt", "hi", "--tokens", "1,2"], "use one", "--prompt with --tokens")
one_line_exit2(["--model", GQ, "--tokens", "1,2", "--chat"], "--chat wraps", "--chat without --prompt")
one_line_exit2(["--model", GQ], "--tokens LIST|@FILE or --prompt", "neither --tokens nor --prompt")
one_line_exit2(["--model", GQ, "--prompt", "x" * 41000 + " y" * 20], "more than the model's 40960 positions",
               "a prompt longer than max_position_embeddings")

shutil.rmtree(tmp)
finish()
