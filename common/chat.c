/* chat.c: --chat, one user message in a ChatML chat template, without evaluating Jinja (qd_tokenizer.h).
 *
 * The template is read, not run: it is recognised as ChatML by its markers, and the two things a single user
 * turn with add_generation_prompt=True depends on are read from its string literals: the default system
 * message (a literal that opens a system turn and closes it, as Qwen2 and Qwen2.5 write it when the
 * conversation has none) and the generation prompt (what the add_generation_prompt branch writes, as text or as
 * its first literal, when it opens the assistant turn). Literals are read inside Jinja tags only.
 * tests/test_tokenizer_live.py holds the result to transformers' apply_chat_template. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qd_json.h"
#include "qd_tokenizer.h"

#define IM_START "<|im_start|>"
#define IM_END "<|im_end|>"

/* The Jinja string literal whose opening quote is at q, decoded (\n, \t, \\, \', \" and the other escapes
 * Python knows as one character) into out (size n). Returns the position after the closing quote, or NULL
 * when it does not close or does not fit. */
static const char *read_literal(const char *q, char *out, size_t n) {
    char quote = *q++;
    size_t k = 0;
    for (; *q && *q != quote; q++) {
        char c = *q;
        if (c == '\\' && q[1]) {
            q++;
            c = *q == 'n' ? '\n' : *q == 't' ? '\t' : *q == 'r' ? '\r' : *q;
        }
        if (k + 1 >= n) return NULL;
        out[k++] = c;
    }
    if (*q != quote) return NULL;
    out[k] = '\0';
    return q + 1;
}

/* The next string literal inside a Jinja tag ({{ }} or {% %}; text outside tags and {# #} comments is skipped)
 * at or after p whose text starts with prefix; its decoded text in out and *after past its closing quote. p
 * must not be inside a literal. NULL: none. */
static const char *find_literal(const char *p, const char *prefix, char *out, size_t n, const char **after) {
    int in_tag = 0;
    while (*p) {
        if (!in_tag) {
            const char *open = strchr(p, '{');
            if (!open) return NULL;
            if (open[1] == '#') {
                const char *close = strstr(open + 2, "#}");
                if (!close) return NULL;
                p = close + 2;
            } else {
                in_tag = open[1] == '{' || open[1] == '%';
                p = open + 1 + in_tag;
            }
            continue;
        }
        if ((*p == '}' && p[1] == '}') || (*p == '%' && p[1] == '}')) {
            in_tag = 0;
            p += 2;
            continue;
        }
        if (*p != '\'' && *p != '"') {
            p++;
            continue;
        }
        const char *end = read_literal(p, out, n);
        if (!end) return NULL;
        if (strncmp(out, prefix, strlen(prefix)) == 0) {
            *after = end;
            return p;
        }
        p = end;
    }
    return NULL;
}

/* The text a template writes as it is right after the {% if add_generation_prompt %} tag that ends at p (with
 * transformers' trim_blocks and lstrip_blocks: the newline after the tag dropped, the indentation before a
 * following block tag too, all whitespace before a tag that opens with '-'), when it opens the assistant turn;
 * into out. 0: it does not. */
static int raw_generation_prompt(const char *p, char *out, size_t n) {
    if (*p == '\n') p++;
    const char *next = p;
    while (*next && !(next[0] == '{' && (next[1] == '{' || next[1] == '%' || next[1] == '#'))) next++;
    size_t len = (size_t)(next - p);
    if (*next && next[2] == '-') {
        while (len && strchr(" \t\n\r", p[len - 1])) len--;
    } else if (*next && next[1] == '%') {
        size_t k = len;
        while (k && (p[k - 1] == ' ' || p[k - 1] == '\t')) k--;
        if (!k || p[k - 1] == '\n') len = k;
    }
    if (len >= n || len < strlen(IM_START "assistant") ||
        strncmp(p, IM_START "assistant", strlen(IM_START "assistant")))
        return 0;
    memcpy(out, p, len);
    out[len] = '\0';
    return 1;
}

static int load_template(const char *dir, char **tpl, char *src, size_t srcn, qd_err *e) {
    *tpl = NULL;
    char *path = qd_path_join(dir, "tokenizer_config.json", e);
    if (!path) return QD_ERUNTIME;
    char *text = NULL;
    int rc = qd_read_file(path, &text, NULL, e);
    if (rc) {
        free(path);
        return rc == QD_EINPUT ? qd_errf(e, QD_EINPUT, "--chat needs the chat template: %s", e->msg) : rc;
    }
    json_error_t je;
    json_t *root = json_loads(text, JSON_REJECT_DUPLICATES, &je);
    free(text);
    if (!root) {
        rc = qd_errf(e, QD_EINPUT, "%s: not valid JSON (line %d, column %d: %s)", path, je.line, je.column, je.text);
        free(path);
        return rc;
    }
    const json_t *ct = json_object_get(root, "chat_template");
    if (json_is_array(ct)) { /* [{"name": ..., "template": ...}]: the default one */
        const json_t *pick = NULL;
        for (size_t i = 0; i < json_array_size(ct); i++) {
            const json_t *it = json_array_get(ct, i), *nm = json_object_get(it, "name");
            if (json_is_string(nm) && strcmp(json_string_value(nm), "default") == 0)
                pick = json_object_get(it, "template");
        }
        ct = pick;
    }
    snprintf(src, srcn, "%s", path);
    if (json_is_string(ct)) {
        *tpl = strdup(json_string_value(ct));
        rc = *tpl ? QD_OK : qd_errf(e, QD_ERUNTIME, "out of memory: strdup of the chat template");
    } else if (ct && !json_is_null(ct)) {
        rc = qd_errf(e, QD_EINPUT, "%s: field 'chat_template': expected a string, found %s", path,
                     qd_json_type_name(ct));
    } else { /* transformers 4.43 and later may keep it in its own file */
        char *jpath = qd_path_join(dir, "chat_template.jinja", e);
        size_t len = 0;
        rc = jpath ? qd_read_file(jpath, tpl, &len, e) : QD_ERUNTIME;
        if (rc == QD_EINPUT)
            rc = qd_errf(e, QD_EINPUT,
                         "%s: no field 'chat_template' and no chat_template.jinja beside it: --chat "
                         "needs the checkpoint's chat template",
                         path);
        if (!rc) snprintf(src, srcn, "%s", jpath);
        free(jpath);
    }
    json_decref(root);
    free(path);
    return rc;
}

int qd_chat_wrap(const char *model_dir, const char *prompt, size_t len, char **out, size_t *out_len, qd_err *e) {
    *out = NULL;
    char *tpl = NULL, src[4096];
    int rc = load_template(model_dir, &tpl, src, sizeof src, e);
    if (rc) return rc;
    char sys[4096] = "", gen[512], lit[4096];
    const char *after, *p;
    if (!strstr(tpl, IM_START) || !strstr(tpl, IM_END)) {
        rc = qd_errf(e, QD_EINPUT,
                     "%s: the chat template is not ChatML (no %s / %s); --chat knows only Qwen's ChatML templates: "
                     "write the turns into the text of --prompt instead",
                     src, IM_START, IM_END);
        goto out;
    }
    /* a default system message: a literal opening a system turn and closing it (not one that is continued
     * with the conversation's own system message) */
    for (p = tpl; (p = find_literal(p, IM_START "system\n", lit, sizeof lit, &after)); p = after) {
        char *end = strstr(lit, IM_END);
        if (end && strcmp(end, IM_END "\n") == 0) {
            snprintf(sys, sizeof sys, "%s", lit);
            break;
        }
    }
    /* the tag that tests add_generation_prompt, then the text it writes as it is, or the literal it writes */
    const char *g = strstr(tpl, "add_generation_prompt"), *tag_end = g ? strstr(g, "%}") : NULL;
    int found = tag_end && raw_generation_prompt(tag_end + 2, gen, sizeof gen);
    if (tag_end && !found && find_literal(tag_end + 2, IM_START "assistant", gen, sizeof gen, &after)) {
        while (*after == ' ' || *after == '\n') after++;
        if (*after == '+' || *after == '~') {
            rc = qd_errf(e, QD_EINPUT,
                         "%s: the chat template's generation prompt is built from variables; --chat reads only a "
                         "literal one",
                         src);
            goto out;
        }
        found = 1;
    }
    if (!found) {
        rc = qd_errf(e, QD_EINPUT,
                     "%s: the chat template has no add_generation_prompt branch opening an assistant turn "
                     "('%sassistant'); --chat cannot tell what to append",
                     src, IM_START);
        goto out;
    }
    size_t n = strlen(sys) + strlen(IM_START "user\n") + len + strlen(IM_END "\n") + strlen(gen) + 1;
    char *s = qd_alloc(n, e);
    if (!s) {
        rc = QD_ERUNTIME;
        goto out;
    }
    size_t k = (size_t)sprintf(s, "%s" IM_START "user\n", sys);
    memcpy(s + k, prompt, len);
    k += len;
    k += (size_t)sprintf(s + k, IM_END "\n%s", gen);
    *out = s;
    *out_len = k;
out:
    free(tpl);
    return rc;
}
