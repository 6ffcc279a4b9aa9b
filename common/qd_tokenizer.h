/* qd_tokenizer.h: a checkpoint's tokenizer.json (the Hugging Face `tokenizers` format), text <-> token ids.
 *
 * What is supported is what Qwen2 and Qwen3 ship, and is checked when the file is loaded; anything else is
 * refused with a one-line QD_EINPUT naming the field, never tokenised differently:
 *   normalizer     null, NFC, or a Sequence of those (utf8proc)
 *   pre_tokenizer  Split (a Regex or String pattern, behavior Isolated or Removed, invert false; PCRE2 in UTF
 *                  and UCP mode) and ByteLevel (add_prefix_space, use_regex with GPT-2's pattern), alone or in
 *                  a Sequence; a ByteLevel step is required (byte-level BPE)
 *   model          BPE: vocab, merges as "a b" strings or ["a", "b"] pairs (rank = position), unk_token,
 *                  fuse_unk, ignore_merges; dropout null, byte_fallback false, no subword prefix or suffix
 *   added_tokens   matched in the raw text before anything else (normalized: false) or in the normalised
 *                  text (normalized: true), leftmost-longest, with single_word, lstrip and rstrip
 *   post_processor null or ByteLevel (adds no ids); decoder ByteLevel; truncation and padding null
 * Encoding follows tokenizers' TokenizerImpl::encode step for step (added tokens, normalizer, pre-tokenizer,
 * BPE merges lowest rank first, ties leftmost, as its Word::merge_all), and is tested id for id against the
 * `tokenizers` package (tests/test_tokenizer.py). */
#ifndef QD_TOKENIZER_H
#define QD_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "qd_util.h"

typedef struct qd_tokenizer qd_tokenizer;

/* The largest tokenizer.json read: Qwen3's is 11 MB (151k tokens and merges). */
#define QD_TOK_FILE_MAX ((size_t)256 << 20)

/* Loads a tokenizer.json. vocab_size > 0: every id in it (vocab, added tokens) must be below it (the model's
 * embedding rows); 0: no limit. NULL with e filled: QD_EINPUT for a missing, unreadable-as-JSON or
 * unsupported file (one line naming the field), QD_ERUNTIME for I/O or memory. */
qd_tokenizer *qd_tok_load(const char *path, int vocab_size, qd_err *e);
/* The same from the file's text (len bytes); path names it in messages. */
qd_tokenizer *qd_tok_parse(const char *path, const char *text, size_t len, int vocab_size, qd_err *e);
void qd_tok_free(qd_tokenizer *t);

/* text (len bytes, UTF-8; NUL bytes allowed) -> ids, as tokenizers' Tokenizer.encode(text).ids. *ids is
 * malloc'd (the caller frees it); *n may be 0 for an empty text. QD_EINPUT if text is not valid UTF-8 (the
 * byte offset is named). */
int qd_tok_encode(const qd_tokenizer *t, const char *text, size_t len, int32_t **ids, int *n, qd_err *e);

/* ids -> text, as tokenizers' Tokenizer.decode(ids, skip_special_tokens=False): special tokens as they are
 * written, bytes that are not UTF-8 as U+FFFD (one per maximal invalid subsequence), ids without a token
 * skipped. *out is malloc'd and NUL-terminated; *len (may be NULL) its length. */
int qd_tok_decode(const qd_tokenizer *t, const int32_t *ids, int n, char **out, size_t *len, qd_err *e);

/* One token as a report shows it, NUL-terminated in buf (truncated to n - 1 bytes, never inside a UTF-8
 * sequence): its decoded bytes with printable UTF-8 as is, \n \r \t as escapes, other control bytes and bytes
 * that are not UTF-8 (half a character) as \xNN; an id without a token as "<id N>". Returns the length. */
size_t qd_tok_token_text(const qd_tokenizer *t, int32_t id, char *buf, size_t n);

/* How many ids the tokenizer defines (the largest id + 1). */
int qd_tok_size(const qd_tokenizer *t);

/* --chat: wraps one user message in the chat template of the checkpoint in model_dir: tokenizer_config.json's
 * chat_template (a string, or the entry named "default" of a list), else chat_template.jinja beside it.
 * No Jinja is evaluated: the template must be a ChatML template (Qwen's: it writes <|im_start|> and
 * <|im_end|> and has an add_generation_prompt branch), and the text is what transformers'
 * apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True) renders with it:
 *   [<|im_start|>system\nDEFAULT<|im_end|>\n]   only if the template writes a default system message
 *                                                (Qwen2 and Qwen2.5 do, Qwen3 does not)
 *   <|im_start|>user\nPROMPT<|im_end|>\n
 *   GENERATION PROMPT                            what the {% if add_generation_prompt %} branch writes: its
 *                                                text as it is, or its first string literal, when that starts
 *                                                with <|im_start|>assistant: "<|im_start|>assistant\n" for
 *                                                Qwen3 (thinking on, its default), with "<think>\n" for the
 *                                                Thinking-2507 releases
 * Anything else is QD_EINPUT (one line). *out is malloc'd and NUL-terminated, *out_len its length. */
int qd_chat_wrap(const char *model_dir, const char *prompt, size_t len, char **out, size_t *out_len, qd_err *e);

#endif
