/* fuzz_tokenizer.c: libFuzzer target on the tokenizer.json reader (common/tokenizer.c): each input is parsed as a
 * tokenizer.json (qd_tok_parse, no vocab_size limit); one that loads then encodes a few texts that exercise
 * every step (added tokens, NFC, the regex, byte-level BPE), and the input itself when it is UTF-8, and decodes
 * and renders every id it got. Built with clang -fsanitize=fuzzer where it links (tests/fuzz/meson.build);
 * replay.c runs the same entry point over the seeds in any build (suite 'hostile'). tests/fuzz/README.md. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "qd_tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void encode_decode(const qd_tokenizer *t, const char *text, size_t len) {
    qd_err e;
    int32_t *ids = NULL;
    int n = 0;
    if (qd_tok_encode(t, text, len, &ids, &n, &e) == QD_OK) {
        char *out = NULL, buf[64];
        if (qd_tok_decode(t, ids, n, &out, NULL, &e) == QD_OK) free(out);
        for (int i = 0; i < n; i++) qd_tok_token_text(t, ids[i], buf, sizeof buf);
        free(ids);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static const char *const texts[] = {
        "Hello, world! It's 2024: 3.14 and caf\xc3\xa9 / cafe\xcc\x81\n\n",
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>",
        "\xe4\xb8\xad\xe6\x96\x87 \xf0\x9f\x91\xa8\xe2\x80\x8d\xf0\x9f\x91\xa9  \t trailing   ",
        "",
    };
    qd_err e;
    qd_tokenizer *t = qd_tok_parse("fuzz", (const char *)data, size, 0, &e);
    if (!t) return 0;
    for (size_t i = 0; i < sizeof texts / sizeof *texts; i++) encode_decode(t, texts[i], strlen(texts[i]));
    encode_decode(t, (const char *)data, size); /* refused unless UTF-8 */
    char buf[8];
    for (int32_t id = -1; id <= qd_tok_size(t) && id < 4096; id++) qd_tok_token_text(t, id, buf, sizeof buf);
    qd_tok_free(t);
    return 0;
}
