/* chat.c: --chat, one user message in a ChatML chat template, without evaluating Jinja (qd_tokenizer.h).
 *
 * The template is read, not run: it is recognised as ChatML by its markers, and the two things a single user
 * turn with add_generation_prompt=True depends on are read from its string literals: the default system
 * message (a literal that opens a system turn and closes it, as Qwen2 and Qwen2.5 write it when the
 * conversation has none) and the generation prompt (the first literal after add_generation_prompt that opens
 * the assistant turn). tests/test_tokenizer.py holds the result to transformers' apply_chat_template. */
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

/* The next string literal at or after p whose text starts with prefix; its decoded text in out. NULL: none. */
static const char *find_literal(const char *p, const char *prefix, char *out, size_t n, const char **after) {
    for (; *p; p++) {
        if (*p != '\'' && *p != '"') continue;
        const char *end = read_literal(p, out, n);
        if (end && strncmp(out, prefix, strlen(prefix)) == 0) {
            *after = end;
            return p;
        }
        if (end) p = end - 1; /* step over the whole literal, so its closing quote opens nothing */
    }
    return NULL;
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
    const char *g = strstr(tpl, "add_generation_prompt");
    if (!g || !find_literal(g, IM_START "assistant", gen, sizeof gen, &after)) {
        rc = qd_errf(e, QD_EINPUT,
                     "%s: the chat template has no add_generation_prompt branch opening an assistant turn "
                     "('%sassistant'); --chat cannot tell what to append",
                     src, IM_START);
        goto out;
    }
    while (*after == ' ' || *after == '\n') after++;
    if (*after == '+' || *after == '~') {
        rc = qd_errf(e, QD_EINPUT,
                     "%s: the chat template's generation prompt is built from variables; --chat "
                     "reads only a literal one",
                     src);
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
