/* tokens.c: token id lists from the command line (qd_tokens.h).
 *
 * Grammar: items separated by commas and/or whitespace; a comma must sit between two items ("5,,3",
 * ",5" and "5," have an empty item). An item is a decimal integer: digits only, no sign, no "0x".
 * Positions in messages are 0-based item indices, the index the id would have in input_ids. */
#include "qd_tokens.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }
static int is_sep(char c) { return c == ',' || is_space(c); }

/* Parses a list. `what` names the source in messages: the argument (quoted) or "tokens file X".
 * lines: 1 when the source is a file, so messages also carry the line number. */
static int parse_list(const char *s, const char *what, int lines, int vocab_size, int max_ids, int32_t **out,
                      int *n_out, qd_err *e) {
    int cap = 64, n = 0, line = 1;
    int32_t *ids = qd_alloc((size_t)cap * sizeof *ids, e);
    if (!ids) return QD_ERUNTIME;
    const char *p = s;
    int need_item = 0; /* a comma was just consumed: an item must follow */
    char where[48] = "";
    for (;;) {
        while (is_space(*p)) line += *p++ == '\n';
        if (lines) snprintf(where, sizeof where, " (line %d)", line);
        if (*p == '\0') {
            if (need_item) {
                qd_errf(e, QD_EINPUT, "%s: empty item after the last comma at position %d%s", what, n, where);
                goto fail;
            }
            break;
        }
        if (*p == ',') {
            qd_errf(e, QD_EINPUT, "%s: empty item between commas at position %d%s", what, n, where);
            goto fail;
        }
        const char *q = p;
        while (*q && !is_sep(*q)) q++;
        int len = (int)(q - p);
        char item[40];
        snprintf(item, sizeof item, "%.*s%s", len > 32 ? 32 : len, p, len > 32 ? "..." : "");
        int neg = *p == '-';
        const char *d = p + neg;
        int digits = d < q;
        for (const char *c = d; c < q; c++) digits &= *c >= '0' && *c <= '9';
        if (!digits) {
            qd_errf(e, QD_EINPUT, "%s: item '%s' at position %d%s is not a decimal token id", what, item, n, where);
            goto fail;
        }
        if (neg) {
            qd_errf(e, QD_EINPUT, "%s: token id %s at position %d%s is negative", what, item, n, where);
            goto fail;
        }
        long long v = 0;
        for (const char *c = d; c < q; c++) {
            v = v * 10 + (*c - '0');
            if (v > INT32_MAX) {
                qd_errf(e, QD_EINPUT, "%s: token id %s at position %d%s overflows a 32-bit id", what, item, n, where);
                goto fail;
            }
        }
        if (v >= vocab_size) {
            qd_errf(e, QD_EINPUT, "%s: token id %lld at position %d%s is >= vocab_size %d", what, v, n, where,
                    vocab_size);
            goto fail;
        }
        if (n == max_ids) {
            qd_errf(e, QD_EINPUT, "%s: more than %d token ids (the model's max_position_embeddings)%s", what, max_ids,
                    where);
            goto fail;
        }
        if (n == cap) {
            cap = cap > max_ids / 2 ? max_ids : cap * 2;
            int32_t *nids = qd_resize(ids, (size_t)cap * sizeof *ids, e);
            if (!nids) goto fail;
            ids = nids;
        }
        ids[n++] = (int32_t)v;
        p = q;
        while (is_space(*p)) line += *p++ == '\n';
        need_item = 0;
        if (*p == ',') {
            p++;
            need_item = 1;
        }
    }
    if (n == 0) {
        qd_errf(e, QD_EINPUT, "%s: empty token list", what);
        goto fail;
    }
    *out = ids;
    *n_out = n;
    return QD_OK;
fail:
    free(ids);
    return e ? e->code : QD_EINPUT;
}

int qd_tokens_parse(const char *arg, int vocab_size, int32_t **tokens, int *n, qd_err *e) {
    return qd_tokens_parse_max(arg, vocab_size, 0, tokens, n, e);
}

int qd_tokens_parse_max(const char *arg, int vocab_size, int max_ids, int32_t **tokens, int *n, qd_err *e) {
    *tokens = NULL;
    *n = 0;
    if (!arg) return qd_errf(e, QD_EINPUT, "tokens: no token list given");
    if (vocab_size <= 0) return qd_errf(e, QD_EINPUT, "tokens: vocab_size %d must be positive", vocab_size);
    if (max_ids <= 0 || max_ids > QD_TOKENS_MAX_DEFAULT) max_ids = QD_TOKENS_MAX_DEFAULT;
    if (arg[0] != '@') {
        char what[96];
        size_t len = strlen(arg);
        /* quote the argument, shortened: the message stays one readable line */
        snprintf(what, sizeof what, "tokens '%.*s%s'", len > 48 ? 48 : (int)len, arg, len > 48 ? "..." : "");
        return parse_list(arg, what, 0, vocab_size, max_ids, tokens, n, e);
    }
    const char *path = arg + 1;
    if (!*path) return qd_errf(e, QD_EINPUT, "tokens '@': no file name after '@'");
    char *text = NULL;
    size_t len = 0;
    qd_err re;
    /* every id has at most 10 digits (it is < 2^31) and a separator; 16 bytes per id leave room for CRLF
     * and padding, 4096 for a header comment's worth of whitespace */
    char why[128];
    snprintf(why, sizeof why, "%d ids (max_position_embeddings) of at most 16 bytes each", max_ids);
    if (qd_read_text(path, (size_t)max_ids * 16 + 4096, why, &text, &len, &re) != QD_OK)
        /* an unreadable tokens file is the user's input, whatever the errno */
        return qd_errf(e, QD_EINPUT, "tokens file %s", re.msg);
    size_t what_n = strlen(path) + 16;
    char *what = qd_alloc(what_n, e);
    if (!what) {
        free(text);
        return QD_ERUNTIME;
    }
    snprintf(what, what_n, "tokens file %s", path);
    int rc;
    if (strlen(text) != len) rc = qd_errf(e, QD_EINPUT, "%s: contains a NUL byte (not a text file)", what);
    else rc = parse_list(text, what, 1, vocab_size, max_ids, tokens, n, e);
    free(what);
    free(text);
    return rc;
}
