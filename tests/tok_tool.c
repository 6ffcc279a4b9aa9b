/* tok_tool: the tokenizer (common/qd_tokenizer.h) from the command line, for tests/test_tokenizer.py.
 *   tok_tool encode TOKENIZER_JSON CORPUS_JSON [VOCAB_SIZE]
 *       CORPUS_JSON is an array of strings; prints one JSON array with, for each string, {"ids": [...],
 *       "decoded": "..."}: its ids and their decoding
 *   tok_tool chat MODEL_DIR PROMPT_FILE
 *       prints {"text": "...", "ids": [...]}: the prompt wrapped by --chat, and its ids
 * Errors: the one-line message on stderr, exit 2 (bad input) or 3. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qd_tokenizer.h"

static int fail(const qd_err *e) {
    fprintf(stderr, "tok_tool: %s\n", e->msg);
    return e->code == QD_EINPUT ? 2 : 3;
}

static json_t *entry(const qd_tokenizer *t, const char *text, size_t len, qd_err *e) {
    int32_t *ids;
    int n;
    char *dec;
    size_t dlen;
    if (qd_tok_encode(t, text, len, &ids, &n, e)) return NULL;
    if (qd_tok_decode(t, ids, n, &dec, &dlen, e)) {
        free(ids);
        return NULL;
    }
    json_t *arr = json_array();
    for (int i = 0; i < n; i++) json_array_append_new(arr, json_integer(ids[i]));
    json_t *o = json_pack("{s:o, s:s%}", "ids", arr, "decoded", dec, dlen);
    free(ids);
    free(dec);
    return o;
}

int main(int argc, char **argv) {
    qd_err e;
    qd_err_clear(&e);
    if (argc >= 4 && strcmp(argv[1], "encode") == 0) {
        qd_tokenizer *t = qd_tok_load(argv[2], argc > 4 ? atoi(argv[4]) : 0, &e);
        if (!t) return fail(&e);
        json_error_t je;
        json_t *corpus = json_load_file(argv[3], JSON_ALLOW_NUL, &je);
        if (!json_is_array(corpus)) {
            fprintf(stderr, "tok_tool: %s: not a JSON array of strings\n", argv[3]);
            return 2;
        }
        json_t *out = json_array();
        for (size_t i = 0; i < json_array_size(corpus); i++) {
            const json_t *s = json_array_get(corpus, i);
            json_t *o = entry(t, json_string_value(s), json_string_length(s), &e);
            if (!o) return fail(&e);
            json_array_append_new(out, o);
        }
        json_dumpf(out, stdout, JSON_ENSURE_ASCII);
        putchar('\n');
        json_decref(out);
        json_decref(corpus);
        qd_tok_free(t);
        return 0;
    }
    if (argc == 4 && strcmp(argv[1], "chat") == 0) {
        char *prompt, *text, *path = qd_path_join(argv[2], "tokenizer.json", &e);
        size_t plen, tlen;
        if (!path || qd_read_file(argv[3], &prompt, &plen, &e) || qd_chat_wrap(argv[2], prompt, plen, &text, &tlen, &e))
            return fail(&e);
        qd_tokenizer *t = qd_tok_load(path, 0, &e);
        json_t *o = t ? entry(t, text, tlen, &e) : NULL;
        if (!o) return fail(&e);
        json_object_set_new(o, "text", json_stringn(text, tlen));
        json_dumpf(o, stdout, JSON_ENSURE_ASCII);
        putchar('\n');
        json_decref(o);
        qd_tok_free(t);
        free(text), free(prompt), free(path);
        return 0;
    }
    fprintf(stderr, "usage: tok_tool encode TOKENIZER_JSON CORPUS_JSON [VOCAB_SIZE] | chat MODEL_DIR PROMPT_FILE\n");
    return 2;
}
