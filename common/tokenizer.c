/* tokenizer.c: byte-level BPE from a tokenizer.json (qd_tokenizer.h).
 *
 * The solved parts come from maintained libraries: jansson reads the file, PCRE2 (UTF + UCP) runs the
 * pre-tokenizer's regex, utf8proc does NFC and UTF-8 validation. What is written here is the byte-level
 * mapping (GPT-2's bytes_to_unicode), the added-token matching, and the BPE merge loop, which follows
 * tokenizers' Word::merge_all: a priority queue of (rank, position) over a linked list of symbols, the lowest
 * rank merged first and, among equal ranks, the leftmost; a queue entry whose pair has changed since it was
 * pushed is dropped when popped. */
#include "qd_tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <jansson.h>
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "qd_json.h"

// ----------------------------------------------------------------------------
// hash maps: token string -> id, (left id, right id) -> (rank, merged id)

typedef struct {
    char *s; /* NULL: empty slot; owned */
    size_t len;
    int32_t id;
} str_slot;

typedef struct {
    str_slot *slots;
    size_t cap; /* a power of two, at least twice the entries */
    size_t n;
} str_map;

static uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h;
}

static uint64_t hash_u64(uint64_t x) { /* splitmix64's finaliser */
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static int str_map_init(str_map *m, size_t entries, qd_err *e) {
    m->cap = 16;
    while (m->cap < 2 * entries + 2) m->cap *= 2;
    m->n = 0;
    m->slots = qd_zalloc(m->cap, sizeof *m->slots, e);
    return m->slots ? QD_OK : QD_ERUNTIME;
}

static str_slot *str_map_find(const str_map *m, const char *s, size_t len) {
    for (size_t i = hash_bytes(s, len) & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
        str_slot *sl = &m->slots[i];
        if (!sl->s || (sl->len == len && memcmp(sl->s, s, len) == 0)) return sl;
    }
}

static int32_t str_map_get(const str_map *m, const char *s, size_t len) {
    const str_slot *sl = str_map_find(m, s, len);
    return sl->s ? sl->id : -1;
}

/* Inserts or overwrites (the table never fills: it was sized for every entry). */
static int str_map_put(str_map *m, const char *s, size_t len, int32_t id, qd_err *e) {
    str_slot *sl = str_map_find(m, s, len);
    if (!sl->s) {
        if (!(sl->s = qd_alloc(len + 1, e))) return QD_ERUNTIME;
        memcpy(sl->s, s, len);
        sl->s[len] = '\0';
        sl->len = len;
        m->n++;
    }
    sl->id = id;
    return QD_OK;
}

static void str_map_free(str_map *m) {
    for (size_t i = 0; m->slots && i < m->cap; i++) free(m->slots[i].s);
    free(m->slots);
    m->slots = NULL;
}

typedef struct {
    uint64_t key; /* left << 32 | right; EMPTY_KEY: empty slot */
    int32_t rank, new_id;
} merge_slot;

#define EMPTY_KEY UINT64_MAX

typedef struct {
    merge_slot *slots;
    size_t cap;
} merge_map;

static merge_slot *merge_find(const merge_map *m, uint64_t key) {
    for (size_t i = hash_u64(key) & (m->cap - 1);; i = (i + 1) & (m->cap - 1))
        if (m->slots[i].key == key || m->slots[i].key == EMPTY_KEY) return &m->slots[i];
}

static uint64_t pair_key(int32_t a, int32_t b) { return (uint64_t)(uint32_t)a << 32 | (uint32_t)b; }

// ----------------------------------------------------------------------------
// the tokenizer

typedef struct {
    char *content; /* owned, NUL-terminated */
    size_t len;
    int32_t id;
    int single_word, lstrip, rstrip, normalized, special;
} added_token;

enum { STEP_SPLIT, STEP_BYTELEVEL };

typedef struct {
    int kind;
    pcre2_code *re;       /* STEP_SPLIT's pattern; STEP_BYTELEVEL with use_regex: GPT-2's */
    int keep_matches;     /* STEP_SPLIT: Isolated 1, Removed 0 */
    int add_prefix_space; /* STEP_BYTELEVEL */
} pre_step;

#define MAX_STEPS 8

struct qd_tokenizer {
    str_map vocab; /* the model's vocab */
    merge_map merges;
    char **id_text;       /* (n_ids) each id's token string (the byte-level characters), NULL: none; borrowed */
    size_t *id_len;       /* (n_ids) */
    int n_ids;            /* largest id + 1 */
    int32_t byte_id[256]; /* the id of each byte's token; -1: not in the vocab */
    added_token *added;
    int n_added, any_normalized_added;
    int nfc;
    pre_step steps[MAX_STEPS];
    int nsteps;
    int32_t unk_id; /* -1: none */
    int fuse_unk, ignore_merges;
    int32_t byte_cp[256]; /* GPT-2's bytes_to_unicode: the code point each byte stands for */
    int16_t cp_byte[324]; /* its inverse; -1: a code point that stands for no byte */
};

/* GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves, the others for 256 + n in order. */
static void byte_tables(qd_tokenizer *t) {
    int n = 0;
    for (int c = 0; c < 324; c++) t->cp_byte[c] = -1;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        t->byte_cp[b] = printable ? b : 256 + n++;
        t->cp_byte[t->byte_cp[b]] = (int16_t)b;
    }
}

static size_t put_utf8(int32_t cp, char *out) { return (size_t)utf8proc_encode_char(cp, (utf8proc_uint8_t *)out); }

/* GPT-2's pattern, used by ByteLevel with use_regex (tokenizers' pre_tokenizers/byte_level.rs). */
static const char GPT2_PATTERN[] = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

void qd_tok_free(qd_tokenizer *t) {
    if (!t) return;
    str_map_free(&t->vocab);
    free(t->merges.slots);
    free(t->id_text);
    free(t->id_len);
    for (int i = 0; i < t->n_added; i++) free(t->added[i].content);
    free(t->added);
    for (int i = 0; i < t->nsteps; i++) pcre2_code_free(t->steps[i].re);
    free(t);
}

int qd_tok_size(const qd_tokenizer *t) { return t->n_ids; }

// ----------------------------------------------------------------------------
// loading

typedef struct {
    const char *path;
    qd_err *e;
} ctx;

#define BAD(c, ...) qd_errf((c)->e, QD_EINPUT, __VA_ARGS__)

/* A field that must be null or absent for this tokenizer to be supported. */
static int want_null(ctx *c, const json_t *obj, const char *key, const char *where) {
    const json_t *v = json_object_get(obj, key);
    if (v && !json_is_null(v))
        return BAD(c, "%s: field '%s%s' is %s; only null is supported", c->path, where, key, qd_json_type_name(v));
    return QD_OK;
}

/* A boolean field (absent: def). */
static int get_bool(ctx *c, const json_t *obj, const char *key, const char *where, int def, int *out) {
    const json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) *out = def;
    else if (json_is_boolean(v)) *out = json_is_true(v);
    else return BAD(c, "%s: field '%s%s': expected a boolean, found %s", c->path, where, key, qd_json_type_name(v));
    return QD_OK;
}

static const char *type_of(const json_t *obj) {
    const json_t *t = json_is_object(obj) ? json_object_get(obj, "type") : NULL;
    return json_is_string(t) ? json_string_value(t) : NULL;
}

/* Unicode's White_Space: what \s means to Oniguruma, the regex engine of tokenizers. PCRE2's \s (UCP) also
 * matches U+180E MONGOLIAN VOWEL SEPARATOR (in \h, though Unicode 6.3 made it a format character), so that
 * "e\u180e'V" would split differently; the pattern's \s and \S are spelled out as this set. */
#define WHITE_SPACE \
    "\\t-\\r\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}"

/* The pattern with \s and \S as White_Space (a \S inside a character class is kept: it cannot be spelled
 * there, and differs only at U+180E). malloc'd; NULL when out of memory. */
static char *white_space_pattern(const char *p, size_t len, size_t *out_len) {
    char *o = malloc(len + (len / 2 + 1) * (sizeof WHITE_SPACE + 3)); /* each 2-byte \s grows by at most that */
    if (!o) return NULL;
    size_t k = 0;
    int in_class = 0;
    for (size_t i = 0; i < len; i++) {
        if (p[i] == '\\' && i + 1 < len) {
            char n = p[++i];
            if (n == 's' || (n == 'S' && !in_class)) {
                k += (size_t)sprintf(o + k, in_class ? "%s" : n == 's' ? "[%s]" : "[^%s]", WHITE_SPACE);
            } else {
                o[k++] = '\\';
                o[k++] = n;
            }
            continue;
        }
        if (p[i] == '[' && !in_class) {
            in_class = 1;
            o[k++] = p[i];
            if (i + 1 < len && p[i + 1] == '^') o[k++] = p[++i];
            if (i + 1 < len && p[i + 1] == ']') o[k++] = p[++i]; /* a leading ] is a literal */
            continue;
        }
        if (p[i] == '[' && i + 1 < len && p[i + 1] == ':') { /* [:alpha:] inside a class */
            size_t j = i + 2;
            while (j + 1 < len && !(p[j] == ':' && p[j + 1] == ']')) j++;
            size_t n = j + 1 < len ? j + 2 - i : 1;
            memcpy(o + k, p + i, n);
            k += n, i += n - 1;
            continue;
        }
        if (p[i] == ']' && in_class) in_class = 0;
        o[k++] = p[i];
    }
    o[k] = '\0';
    *out_len = k;
    return o;
}

static int compile_re(ctx *c, const char *pattern, size_t len, int literal, const char *where, pcre2_code **out) {
    int err;
    PCRE2_SIZE at;
    size_t wlen = len;
    char *ws = literal ? NULL : white_space_pattern(pattern, len, &wlen);
    if (!literal && !ws) return qd_errf(c->e, QD_ERUNTIME, "out of memory: the pattern of '%s'", where);
    *out = pcre2_compile((PCRE2_SPTR)(ws ? ws : pattern), wlen, PCRE2_UTF | (literal ? PCRE2_LITERAL : PCRE2_UCP), &err,
                         &at, NULL);
    free(ws);
    if (!*out) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof msg);
        return BAD(c, "%s: field '%s': the pattern does not compile at offset %zu: %s", c->path, where, (size_t)at,
                   (const char *)msg);
    }
    pcre2_jit_compile(*out, PCRE2_JIT_COMPLETE); /* speed only: the interpreter runs when JIT is unavailable */
    return QD_OK;
}

static int add_step(ctx *c, qd_tokenizer *t, const json_t *p, const char *where) {
    const char *type = type_of(p);
    if (t->nsteps == MAX_STEPS) return BAD(c, "%s: field '%s': more than %d pre-tokenizers", c->path, where, MAX_STEPS);
    pre_step *s = &t->steps[t->nsteps];
    char w[96];
    if (type && strcmp(type, "Split") == 0) {
        const json_t *pat = json_object_get(p, "pattern"), *beh = json_object_get(p, "behavior");
        int invert = 0, rc;
        if ((rc = get_bool(c, p, "invert", where, 0, &invert))) return rc;
        if (invert) return BAD(c, "%s: field '%sinvert' is true; only false is supported", c->path, where);
        const char *b = json_is_string(beh) ? json_string_value(beh) : "";
        if (strcmp(b, "Isolated") != 0 && strcmp(b, "Removed") != 0)
            return BAD(c, "%s: field '%sbehavior' is '%s'; only Isolated and Removed are supported", c->path, where, b);
        const json_t *re = json_is_object(pat) ? json_object_get(pat, "Regex") : NULL;
        const json_t *str = json_is_object(pat) ? json_object_get(pat, "String") : NULL;
        if (!json_is_string(re) && !json_is_string(str))
            return BAD(c, "%s: field '%spattern': expected {\"Regex\": ...} or {\"String\": ...}", c->path, where);
        s->kind = STEP_SPLIT;
        s->keep_matches = strcmp(b, "Isolated") == 0;
        snprintf(w, sizeof w, "%spattern", where);
        const json_t *v = re ? re : str;
        if ((rc = compile_re(c, json_string_value(v), json_string_length(v), !re, w, &s->re))) return rc;
        t->nsteps++;
        return QD_OK;
    }
    if (type && strcmp(type, "ByteLevel") == 0) {
        int use_regex = 1, rc;
        s->kind = STEP_BYTELEVEL;
        if ((rc = get_bool(c, p, "add_prefix_space", where, 1, &s->add_prefix_space)) ||
            (rc = get_bool(c, p, "use_regex", where, 1, &use_regex)))
            return rc;
        snprintf(w, sizeof w, "%suse_regex", where);
        if (use_regex && (rc = compile_re(c, GPT2_PATTERN, sizeof GPT2_PATTERN - 1, 0, w, &s->re))) return rc;
        t->nsteps++;
        return QD_OK;
    }
    return BAD(c, "%s: field '%stype' is '%s'; supported pre-tokenizers: Split, ByteLevel, Sequence", c->path, where,
               type ? type : "(none)");
}

static int load_pre_tokenizer(ctx *c, qd_tokenizer *t, const json_t *p) {
    const char *type = type_of(p);
    if (!json_is_object(p)) return BAD(c, "%s: field 'pre_tokenizer': expected an object", c->path);
    int rc = QD_OK;
    if (type && strcmp(type, "Sequence") == 0) {
        const json_t *list = json_object_get(p, "pretokenizers");
        if (!json_is_array(list)) return BAD(c, "%s: field 'pre_tokenizer.pretokenizers': expected an array", c->path);
        for (size_t i = 0; i < json_array_size(list) && !rc; i++) {
            char w[64];
            snprintf(w, sizeof w, "pre_tokenizer.pretokenizers[%zu].", i);
            const json_t *q = json_array_get(list, i);
            if (!json_is_object(q)) return BAD(c, "%s: field '%s': expected an object", c->path, w);
            rc = add_step(c, t, q, w);
        }
    } else {
        rc = add_step(c, t, p, "pre_tokenizer.");
    }
    if (rc) return rc;
    for (int i = 0; i < t->nsteps; i++)
        if (t->steps[i].kind == STEP_BYTELEVEL) return QD_OK;
    return BAD(c, "%s: field 'pre_tokenizer': no ByteLevel step; only byte-level BPE is supported", c->path);
}

static int load_normalizer(ctx *c, qd_tokenizer *t, const json_t *n, const char *where) {
    const char *type = type_of(n);
    if (!n || json_is_null(n)) return QD_OK;
    if (type && strcmp(type, "NFC") == 0) {
        t->nfc = 1;
        return QD_OK;
    }
    if (type && strcmp(type, "Sequence") == 0) {
        const json_t *list = json_object_get(n, "normalizers");
        if (!json_is_array(list)) return BAD(c, "%s: field '%s.normalizers': expected an array", c->path, where);
        for (size_t i = 0; i < json_array_size(list); i++) {
            char w[64];
            snprintf(w, sizeof w, "%s.normalizers[%zu]", where, i);
            int rc = load_normalizer(c, t, json_array_get(list, i), w);
            if (rc) return rc;
        }
        return QD_OK;
    }
    return BAD(c, "%s: field '%s': type '%s'; supported normalizers: NFC, Sequence, null", c->path, where,
               type ? type : "(none)");
}

static int check_id(ctx *c, json_int_t id, int limit, const char *what, const char *name) {
    if (id < 0 || id > INT32_MAX - 1 || (limit > 0 && id >= limit))
        return BAD(c, "%s: %s '%.60s' has id %lld, outside 0..%d (the model's vocab_size %d)", c->path, what, name,
                   (long long)id, limit > 0 ? limit - 1 : INT32_MAX - 1, limit);
    return QD_OK;
}

static int load_vocab(ctx *c, qd_tokenizer *t, const json_t *vocab, int limit) {
    if (!json_is_object(vocab)) return BAD(c, "%s: field 'model.vocab': expected an object", c->path);
    int rc = str_map_init(&t->vocab, json_object_size(vocab), c->e);
    const char *key;
    const json_t *v;
    json_object_foreach((json_t *)vocab, key, v) {
        if (rc) break;
        if (!json_is_integer(v))
            return BAD(c, "%s: field 'model.vocab': token '%.60s' has %s for its id", c->path, key,
                       qd_json_type_name(v));
        if ((rc = check_id(c, json_integer_value(v), limit, "token", key))) return rc;
        rc = str_map_put(&t->vocab, key, strlen(key), (int32_t)json_integer_value(v), c->e);
    }
    return rc;
}

/* One merge: "a b" or ["a", "b"]; both parts and their concatenation must be tokens of the vocab. */
static int load_merge(ctx *c, qd_tokenizer *t, const json_t *m, size_t rank) {
    const char *a, *b;
    size_t la, lb;
    char buf[2048];
    if (json_is_string(m)) {
        const char *s = json_string_value(m), *sp = strchr(s, ' ');
        if (!sp || strchr(sp + 1, ' ') || sp == s || !sp[1])
            return BAD(c, "%s: field 'model.merges[%zu]': '%.60s' is not two tokens separated by one space", c->path,
                       rank, s);
        a = s, la = (size_t)(sp - s), b = sp + 1, lb = strlen(b);
    } else if (json_is_array(m) && json_array_size(m) == 2 && json_is_string(json_array_get(m, 0)) &&
               json_is_string(json_array_get(m, 1))) {
        a = json_string_value(json_array_get(m, 0)), la = json_string_length(json_array_get(m, 0));
        b = json_string_value(json_array_get(m, 1)), lb = json_string_length(json_array_get(m, 1));
    } else {
        return BAD(c, "%s: field 'model.merges[%zu]': expected \"a b\" or [\"a\", \"b\"], found %s", c->path, rank,
                   qd_json_type_name(m));
    }
    int32_t ia = str_map_get(&t->vocab, a, la), ib = str_map_get(&t->vocab, b, lb);
    if (ia < 0 || ib < 0)
        return BAD(c, "%s: field 'model.merges[%zu]': token '%.*s' is not in the vocab", c->path, rank,
                   (int)(ia < 0 ? (la > 60 ? 60 : la) : (lb > 60 ? 60 : lb)), ia < 0 ? a : b);
    if (la + lb >= sizeof buf)
        return BAD(c, "%s: field 'model.merges[%zu]': merged token longer than %zu bytes", c->path, rank, sizeof buf);
    memcpy(buf, a, la);
    memcpy(buf + la, b, lb);
    int32_t merged = str_map_get(&t->vocab, buf, la + lb);
    if (merged < 0)
        return BAD(c, "%s: field 'model.merges[%zu]': the merged token '%.*s' is not in the vocab", c->path, rank,
                   (int)(la + lb > 60 ? 60 : la + lb), buf);
    merge_slot *sl = merge_find(&t->merges, pair_key(ia, ib));
    *sl = (merge_slot){pair_key(ia, ib), (int32_t)rank, merged}; /* a repeated pair: the last rank, as tokenizers */
    return QD_OK;
}

static int load_model(ctx *c, qd_tokenizer *t, const json_t *model, int limit) {
    const char *type = type_of(model);
    if (!json_is_object(model)) return BAD(c, "%s: field 'model': expected an object", c->path);
    if (!type || strcmp(type, "BPE") != 0)
        return BAD(c, "%s: field 'model.type' is '%s'; only BPE is supported", c->path, type ? type : "(none)");
    int rc, byte_fallback = 0;
    const json_t *drop = json_object_get(model, "dropout");
    if (drop && !json_is_null(drop) && !(json_is_number(drop) && json_number_value(drop) == 0.0))
        return BAD(c, "%s: field 'model.dropout': BPE dropout is random; only null is supported", c->path);
    static const char *const affixes[] = {"continuing_subword_prefix", "end_of_word_suffix"};
    for (int i = 0; i < 2; i++) {
        const json_t *v = json_object_get(model, affixes[i]);
        if (v && !json_is_null(v) && !(json_is_string(v) && json_string_length(v) == 0))
            return BAD(c, "%s: field 'model.%s': only null or \"\" is supported", c->path, affixes[i]);
    }
    if ((rc = get_bool(c, model, "fuse_unk", "model.", 0, &t->fuse_unk)) ||
        (rc = get_bool(c, model, "byte_fallback", "model.", 0, &byte_fallback)) ||
        (rc = get_bool(c, model, "ignore_merges", "model.", 0, &t->ignore_merges)))
        return rc;
    if (byte_fallback) return BAD(c, "%s: field 'model.byte_fallback' is true; only false is supported", c->path);
    if ((rc = load_vocab(c, t, json_object_get(model, "vocab"), limit))) return rc;
    const json_t *unk = json_object_get(model, "unk_token");
    t->unk_id = -1;
    if (unk && !json_is_null(unk)) {
        if (!json_is_string(unk) ||
            (t->unk_id = str_map_get(&t->vocab, json_string_value(unk), json_string_length(unk))) < 0)
            return BAD(c, "%s: field 'model.unk_token': not a token of the vocab", c->path);
    }
    const json_t *merges = json_object_get(model, "merges");
    if (merges && !json_is_array(merges))
        return BAD(c, "%s: field 'model.merges': expected an array, found %s", c->path, qd_json_type_name(merges));
    size_t n = merges ? json_array_size(merges) : 0;
    if (n > INT32_MAX) return BAD(c, "%s: field 'model.merges': more than %d merges", c->path, INT32_MAX);
    t->merges.cap = 16;
    while (t->merges.cap < 2 * n + 2) t->merges.cap *= 2;
    if (!(t->merges.slots = qd_alloc(t->merges.cap * sizeof *t->merges.slots, c->e))) return QD_ERUNTIME;
    for (size_t i = 0; i < t->merges.cap; i++) t->merges.slots[i].key = EMPTY_KEY;
    for (size_t i = 0; i < n; i++)
        if ((rc = load_merge(c, t, json_array_get(merges, i), i))) return rc;
    return QD_OK;
}

static int load_added(ctx *c, qd_tokenizer *t, const json_t *list, int limit) {
    if (!list || json_is_null(list)) return QD_OK;
    if (!json_is_array(list)) return BAD(c, "%s: field 'added_tokens': expected an array", c->path);
    size_t n = json_array_size(list);
    if (!(t->added = qd_zalloc(n, sizeof *t->added, c->e))) return QD_ERUNTIME;
    for (size_t i = 0; i < n; i++) {
        const json_t *a = json_array_get(list, i), *id = json_object_get(a, "id"), *ct = json_object_get(a, "content");
        char w[48];
        snprintf(w, sizeof w, "added_tokens[%zu].", i);
        if (!json_is_object(a) || !json_is_integer(id) || !json_is_string(ct) || json_string_length(ct) == 0)
            return BAD(c,
                       "%s: field 'added_tokens[%zu]': expected an object with an integer 'id' and a non-empty "
                       "string 'content'",
                       c->path, i);
        added_token *tk = &t->added[t->n_added];
        int rc = check_id(c, json_integer_value(id), limit, "added token", json_string_value(ct));
        if (!rc) rc = get_bool(c, a, "special", w, 0, &tk->special);
        if (!rc) rc = get_bool(c, a, "single_word", w, 0, &tk->single_word);
        if (!rc) rc = get_bool(c, a, "lstrip", w, 0, &tk->lstrip);
        if (!rc) rc = get_bool(c, a, "rstrip", w, 0, &tk->rstrip);
        if (!rc) rc = get_bool(c, a, "normalized", w, !tk->special, &tk->normalized);
        if (rc) return rc;
        tk->len = json_string_length(ct);
        if (!(tk->content = qd_alloc(tk->len + 1, c->e))) return QD_ERUNTIME;
        memcpy(tk->content, json_string_value(ct), tk->len + 1);
        tk->id = (int32_t)json_integer_value(id);
        t->n_added++;
        if (tk->normalized && t->nfc) { /* matched in the normalised text: its content normalised too */
            utf8proc_uint8_t *nf = NULL;
            utf8proc_ssize_t k = utf8proc_map((const utf8proc_uint8_t *)tk->content, (utf8proc_ssize_t)tk->len, &nf,
                                              UTF8PROC_STABLE | UTF8PROC_COMPOSE);
            if (k < 0) return BAD(c, "%s: field 'added_tokens[%zu].content': not valid UTF-8", c->path, i);
            free(tk->content);
            tk->content = (char *)nf;
            tk->len = (size_t)k;
        }
        t->any_normalized_added |= tk->normalized;
    }
    return QD_OK;
}

/* id -> token text, over the vocab and the added tokens (an added token's content wins). */
static int build_ids(ctx *c, qd_tokenizer *t) {
    int32_t max = -1;
    for (size_t i = 0; i < t->vocab.cap; i++)
        if (t->vocab.slots[i].s && t->vocab.slots[i].id > max) max = t->vocab.slots[i].id;
    for (int i = 0; i < t->n_added; i++)
        if (t->added[i].id > max) max = t->added[i].id;
    t->n_ids = max + 1;
    if (!(t->id_text = qd_zalloc((size_t)t->n_ids, sizeof *t->id_text, c->e)) ||
        !(t->id_len = qd_zalloc((size_t)t->n_ids, sizeof *t->id_len, c->e)))
        return QD_ERUNTIME;
    for (size_t i = 0; i < t->vocab.cap; i++) {
        const str_slot *sl = &t->vocab.slots[i];
        if (sl->s) t->id_text[sl->id] = sl->s, t->id_len[sl->id] = sl->len;
    }
    for (int i = 0; i < t->n_added; i++)
        t->id_text[t->added[i].id] = t->added[i].content, t->id_len[t->added[i].id] = t->added[i].len;
    for (int b = 0; b < 256; b++) {
        char s[4];
        t->byte_id[b] = str_map_get(&t->vocab, s, put_utf8(t->byte_cp[b], s));
    }
    return QD_OK;
}

qd_tokenizer *qd_tok_load(const char *path, int vocab_size, qd_err *e) {
    char *text = NULL;
    size_t len = 0;
    if (qd_read_text(path, QD_TOK_FILE_MAX, "a tokenizer.json: Qwen3's is 11 MB", &text, &len, e)) return NULL;
    qd_tokenizer *t = qd_tok_parse(path, text, len, vocab_size, e);
    free(text);
    return t;
}

qd_tokenizer *qd_tok_parse(const char *path, const char *text, size_t len, int vocab_size, qd_err *e) {
    int rc;
    json_error_t je;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        qd_errf(e, QD_EINPUT, "%s: not valid JSON (line %d, column %d: %s)", path, je.line, je.column, je.text);
        return NULL;
    }
    ctx c = {path, e};
    qd_tokenizer *t = NULL;
    if (!json_is_object(root)) {
        BAD(&c, "%s: expected a JSON object at the top, found %s", path, qd_json_type_name(root));
        goto fail;
    }
    if (!(t = qd_zalloc(1, sizeof *t, e))) goto fail;
    byte_tables(t);
    const json_t *dec = json_object_get(root, "decoder"), *post = json_object_get(root, "post_processor");
    const char *pt = type_of(post);
    if ((rc = want_null(&c, root, "truncation", "")) || (rc = want_null(&c, root, "padding", "")) ||
        (rc = load_normalizer(&c, t, json_object_get(root, "normalizer"), "normalizer")) ||
        (rc = load_pre_tokenizer(&c, t, json_object_get(root, "pre_tokenizer"))) ||
        (rc = load_model(&c, t, json_object_get(root, "model"), vocab_size)) ||
        (rc = load_added(&c, t, json_object_get(root, "added_tokens"), vocab_size)))
        goto fail;
    if (post && !json_is_null(post) && !(pt && strcmp(pt, "ByteLevel") == 0)) {
        BAD(&c, "%s: field 'post_processor.type' is '%s'; only ByteLevel (or null) is supported", path,
            pt ? pt : "(none)");
        goto fail;
    }
    if (!type_of(dec) || strcmp(type_of(dec), "ByteLevel") != 0) {
        BAD(&c, "%s: field 'decoder.type' is '%s'; only ByteLevel is supported", path,
            type_of(dec) ? type_of(dec) : "(none)");
        goto fail;
    }
    if (build_ids(&c, t)) goto fail;
    json_decref(root);
    return t;
fail:
    json_decref(root);
    qd_tok_free(t);
    return NULL;
}

// ----------------------------------------------------------------------------
// encoding

typedef struct {
    int32_t *v;
    int n, cap;
} idvec;

static int push_id(idvec *o, int32_t id, qd_err *e) {
    if (o->n == o->cap) {
        if (o->cap > INT32_MAX / 2) return qd_errf(e, QD_EINPUT, "text: more than %d tokens", INT32_MAX / 2);
        int cap = o->cap ? o->cap * 2 : 256;
        int32_t *v = qd_resize(o->v, (size_t)cap * sizeof *v, e);
        if (!v) return QD_ERUNTIME;
        o->v = v, o->cap = cap;
    }
    o->v[o->n++] = id;
    return QD_OK;
}

typedef struct {
    int32_t rank, pos, new_id;
} merge_entry;

/* Min-heap on (rank, pos): tokenizers' Merge ordering. */
static int entry_less(const merge_entry *a, const merge_entry *b) {
    return a->rank != b->rank ? a->rank < b->rank : a->pos < b->pos;
}

static void heap_push(merge_entry *h, int *n, merge_entry x) {
    int i = (*n)++;
    while (i > 0 && entry_less(&x, &h[(i - 1) / 2])) h[i] = h[(i - 1) / 2], i = (i - 1) / 2;
    h[i] = x;
}

static merge_entry heap_pop(merge_entry *h, int *n) {
    merge_entry top = h[0], x = h[--*n];
    int i = 0;
    for (;;) {
        int l = 2 * i + 1, r = l + 1, m = i;
        const merge_entry *best = &x;
        if (l < *n && entry_less(&h[l], best)) m = l, best = &h[l];
        if (r < *n && entry_less(&h[r], best)) m = r;
        if (m == i) break;
        h[i] = h[m], i = m;
    }
    if (*n) h[i] = x;
    return top;
}

typedef struct {
    int32_t *id, *prev, *next;
    unsigned char *gone;
    merge_entry *heap;
    char *mapped; /* a word's byte-level text (ignore_merges) */
    size_t cap;
} bpe_scratch;

static int scratch_fit(bpe_scratch *s, size_t n, qd_err *e) {
    if (n <= s->cap) return QD_OK;
    size_t cap = n < 64 ? 64 : n * 2;
    if (cap > INT32_MAX / 2) return qd_errf(e, QD_EINPUT, "text: a pre-tokenized word of %zu bytes", n);
    int32_t *a = qd_resize(s->id, cap * sizeof *a, e), *b = a ? qd_resize(s->prev, cap * sizeof *b, e) : NULL;
    if (a) s->id = a;
    if (b) s->prev = b;
    int32_t *c = b ? qd_resize(s->next, cap * sizeof *c, e) : NULL;
    if (c) s->next = c;
    unsigned char *g = c ? qd_resize(s->gone, cap, e) : NULL;
    if (g) s->gone = g;
    merge_entry *h = g ? qd_resize(s->heap, 2 * cap * sizeof *h, e) : NULL; /* every push follows a merge */
    if (h) s->heap = h;
    char *m = h ? qd_resize(s->mapped, 2 * cap, e) : NULL;
    if (!m) return QD_ERUNTIME;
    s->mapped = m;
    s->cap = cap;
    return QD_OK;
}

static int32_t merge_of(const qd_tokenizer *t, int32_t a, int32_t b, int32_t *new_id) {
    const merge_slot *sl = merge_find(&t->merges, pair_key(a, b));
    if (sl->key == EMPTY_KEY) return -1;
    *new_id = sl->new_id;
    return sl->rank;
}

/* One pre-tokenized word (raw bytes) -> ids. */
static int bpe_word(const qd_tokenizer *t, const unsigned char *w, size_t len, bpe_scratch *s, idvec *out, qd_err *e) {
    int rc = scratch_fit(s, len + 1, e);
    if (rc) return rc;
    if (t->ignore_merges) { /* a word that is a token as a whole is that token */
        size_t k = 0;
        for (size_t i = 0; i < len; i++) k += put_utf8(t->byte_cp[w[i]], s->mapped + k);
        int32_t id = str_map_get(&t->vocab, s->mapped, k);
        if (id >= 0) return push_id(out, id, e);
    }
    int n = 0, last_unk = 0;
    for (size_t i = 0; i < len; i++) {
        int32_t id = t->byte_id[w[i]];
        if (id < 0 && t->unk_id < 0) continue; /* no token and no unk: dropped, as tokenizers does */
        if (id < 0 && t->fuse_unk && last_unk) continue;
        last_unk = id < 0;
        s->id[n] = id < 0 ? t->unk_id : id;
        s->prev[n] = n - 1;
        s->next[n] = n + 1;
        s->gone[n] = 0;
        n++;
    }
    if (n) s->next[n - 1] = -1;
    int nh = 0;
    for (int i = 0; i + 1 < n; i++) {
        int32_t nid, rank = merge_of(t, s->id[i], s->id[i + 1], &nid);
        if (rank >= 0) heap_push(s->heap, &nh, (merge_entry){rank, i, nid});
    }
    while (nh) {
        merge_entry m = heap_pop(s->heap, &nh);
        int p = m.pos, q = s->next[p];
        if (s->gone[p] || q < 0) continue;
        int32_t nid;
        if (merge_of(t, s->id[p], s->id[q], &nid) < 0 || nid != m.new_id) continue; /* the pair has changed */
        s->id[p] = nid;
        s->gone[q] = 1;
        s->next[p] = s->next[q];
        if (s->next[q] >= 0) s->prev[s->next[q]] = p;
        int32_t rank;
        if (s->prev[p] >= 0 && (rank = merge_of(t, s->id[s->prev[p]], s->id[p], &nid)) >= 0)
            heap_push(s->heap, &nh, (merge_entry){rank, s->prev[p], nid});
        if (s->next[p] >= 0 && (rank = merge_of(t, s->id[p], s->id[s->next[p]], &nid)) >= 0)
            heap_push(s->heap, &nh, (merge_entry){rank, p, nid});
    }
    for (int i = 0; i < n; i++)
        if (!s->gone[i] && (rc = push_id(out, s->id[i], e))) return rc;
    return QD_OK;
}

/* A piece of text being pre-tokenized: it points into the text or into a buffer of the word list's own (a
 * prefix space added). */
typedef struct {
    const char *p;
    size_t len;
} piece;

typedef struct {
    piece *v;
    int n, cap;
} piece_list;

static int push_piece(piece_list *l, const char *p, size_t len, qd_err *e) {
    if (l->n == l->cap) {
        int cap = l->cap ? l->cap * 2 : 64;
        piece *v = qd_resize(l->v, (size_t)cap * sizeof *v, e);
        if (!v) return QD_ERUNTIME;
        l->v = v, l->cap = cap;
    }
    l->v[l->n++] = (piece){p, len};
    return QD_OK;
}

/* Splits one piece by re: the matches (keep_matches) and the text between them, empty parts dropped. */
static int split_piece(const pcre2_code *re, int keep_matches, piece pc, pcre2_match_data *md, piece_list *out,
                       qd_err *e) {
    size_t off = 0, prev = 0;
    int rc = QD_OK;
    while (off <= pc.len && !rc) {
        int m = pcre2_match(re, (PCRE2_SPTR)pc.p, pc.len, off, PCRE2_NO_UTF_CHECK, md, NULL);
        if (m == PCRE2_ERROR_NOMATCH) break;
        if (m < 0) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(m, msg, sizeof msg);
            return qd_errf(e, QD_ERUNTIME, "pcre2_match failed: %s", (const char *)msg);
        }
        const PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        size_t s = ov[0], t = ov[1];
        if (t == s) { /* an empty match: step over one character */
            if (s >= pc.len) break;
            off = s + 1;
            while (off < pc.len && ((unsigned char)pc.p[off] & 0xC0) == 0x80) off++;
            continue;
        }
        if (s > prev) rc = push_piece(out, pc.p + prev, s - prev, e);
        if (!rc && keep_matches) rc = push_piece(out, pc.p + s, t - s, e);
        prev = off = t;
    }
    if (!rc && prev < pc.len) rc = push_piece(out, pc.p + prev, pc.len - prev, e);
    return rc;
}

/* Pre-tokenizes one stretch of normalised text and runs BPE on each word. */
static int encode_text(const qd_tokenizer *t, const char *text, size_t len, pcre2_match_data *md, bpe_scratch *s,
                       idvec *out, qd_err *e) {
    piece_list cur = {0}, next = {0};
    char **owned = NULL; /* the prefixed copies, freed at the end */
    int n_owned = 0;
    int rc = push_piece(&cur, text, len, e);
    for (int k = 0; k < t->nsteps && !rc; k++) {
        const pre_step *st = &t->steps[k];
        for (int i = 0; i < cur.n && !rc; i++) {
            piece pc = cur.v[i];
            if (!pc.len) continue; /* tokenizers keeps no empty piece, so a prefix space makes none */
            if (st->kind == STEP_BYTELEVEL && st->add_prefix_space && (pc.len == 0 || pc.p[0] != ' ')) {
                char **o = qd_resize(owned, (size_t)(n_owned + 1) * sizeof *o, e);
                char *own = o ? qd_alloc(pc.len + 1, e) : NULL;
                if (o) owned = o;
                if (!own) {
                    rc = QD_ERUNTIME;
                    break;
                }
                owned[n_owned++] = own;
                own[0] = ' ';
                memcpy(own + 1, pc.p, pc.len);
                pc = (piece){own, pc.len + 1};
            }
            if (st->re) rc = split_piece(st->re, st->kind == STEP_SPLIT ? st->keep_matches : 1, pc, md, &next, e);
            else if (pc.len) rc = push_piece(&next, pc.p, pc.len, e);
        }
        free(cur.v);
        cur = next;
        next = (piece_list){0};
    }
    for (int i = 0; i < cur.n && !rc; i++) rc = bpe_word(t, (const unsigned char *)cur.v[i].p, cur.v[i].len, s, out, e);
    free(cur.v);
    free(next.v);
    for (int i = 0; i < n_owned; i++) free(owned[i]);
    free(owned);
    return rc;
}

static int is_white(int32_t c) { /* Rust's char::is_whitespace: the White_Space property */
    return (c >= 9 && c <= 13) || c == 32 || c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) ||
           c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

/* Rust regex's Unicode \w, which single_word tests: letters, marks, decimal and letter numbers, connector
 * punctuation (_), the joiners. */
static int is_word(int32_t c) {
    utf8proc_category_t k = utf8proc_category(c);
    return (k >= UTF8PROC_CATEGORY_LU && k <= UTF8PROC_CATEGORY_ME) || k == UTF8PROC_CATEGORY_ND ||
           k == UTF8PROC_CATEGORY_NL || k == UTF8PROC_CATEGORY_PC || c == 0x200C || c == 0x200D;
}

/* The code point that ends at s[end) / starts at s[at]; -1 at the edges. */
static int32_t cp_before(const char *s, size_t end) {
    if (!end) return -1;
    size_t i = end - 1;
    while (i > 0 && ((unsigned char)s[i] & 0xC0) == 0x80) i--;
    utf8proc_int32_t c;
    return utf8proc_iterate((const utf8proc_uint8_t *)s + i, (utf8proc_ssize_t)(end - i), &c) > 0 ? c : -1;
}

static int32_t cp_at(const char *s, size_t len, size_t at, size_t *clen) {
    utf8proc_int32_t c;
    utf8proc_ssize_t k =
        at < len ? utf8proc_iterate((const utf8proc_uint8_t *)s + at, (utf8proc_ssize_t)(len - at), &c) : 0;
    *clen = k > 0 ? (size_t)k : 1;
    return k > 0 ? c : -1;
}

typedef struct {
    size_t start, end;
    int32_t id; /* -1: text */
} segment;

typedef struct {
    segment *v;
    int n, cap;
} seg_list;

static int push_seg(seg_list *l, size_t start, size_t end, int32_t id, qd_err *e) {
    if (l->n == l->cap) {
        int cap = l->cap ? l->cap * 2 : 16;
        segment *v = qd_resize(l->v, (size_t)cap * sizeof *v, e);
        if (!v) return QD_ERUNTIME;
        l->v = v, l->cap = cap;
    }
    l->v[l->n++] = (segment){start, end, id};
    return QD_OK;
}

/* tokenizers' AddedVocabulary::find_matches: the added tokens of one kind (normalized or not) found in s,
 * leftmost-longest and non-overlapping; single_word, lstrip and rstrip applied; the text between them as
 * text segments. An empty s is one empty text segment. */
static int find_added(const qd_tokenizer *t, int normalized, const char *s, size_t len, seg_list *out, qd_err *e) {
    size_t start_offset = 0, i = 0;
    int rc = QD_OK;
    while (i < len && !rc) {
        const added_token *best = NULL;
        for (int k = 0; k < t->n_added; k++) {
            const added_token *a = &t->added[k];
            if (a->normalized != normalized || a->len > len - i || (best && a->len <= best->len)) continue;
            if (memcmp(s + i, a->content, a->len) == 0) best = a;
        }
        if (!best) {
            i++;
            continue;
        }
        size_t start = i, stop = i + best->len;
        i = stop; /* the match is consumed whether or not it is kept */
        if (best->single_word) {
            size_t cl;
            int32_t before = cp_before(s, start), after = cp_at(s, len, stop, &cl);
            if ((before >= 0 && is_word(before)) || (after >= 0 && is_word(after))) continue;
        }
        if (best->lstrip) {
            while (start > start_offset) {
                int32_t c = cp_before(s, start);
                if (c < 0 || !is_white(c)) break;
                size_t k = start - 1;
                while (k > 0 && ((unsigned char)s[k] & 0xC0) == 0x80) k--;
                start = k;
            }
        }
        if (best->rstrip) {
            size_t cl;
            int32_t c;
            while (stop < len && (c = cp_at(s, len, stop, &cl)) >= 0 && is_white(c)) stop += cl;
            i = stop;
        }
        if (start_offset < start) rc = push_seg(out, start_offset, start, -1, e);
        if (!rc) rc = push_seg(out, start, stop, best->id, e);
        start_offset = stop;
    }
    if (!rc && (start_offset < len || len == 0)) rc = push_seg(out, start_offset, len, -1, e);
    return rc;
}

int qd_tok_encode(const qd_tokenizer *t, const char *text, size_t len, int32_t **ids, int *n, qd_err *e) {
    *ids = NULL;
    *n = 0;
    for (size_t i = 0; i < len;) { /* valid UTF-8 or a message naming the byte */
        utf8proc_int32_t c;
        utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)text + i, (utf8proc_ssize_t)(len - i), &c);
        if (k <= 0) return qd_errf(e, QD_EINPUT, "text is not valid UTF-8 at byte %zu", i);
        i += (size_t)k;
    }
    idvec out = {0};
    seg_list raw = {0}, norm = {0};
    bpe_scratch s = {0};
    pcre2_match_data *md = pcre2_match_data_create(4, NULL);
    int rc = md ? find_added(t, 0, text, len, &raw, e) : qd_errf(e, QD_ERUNTIME, "pcre2_match_data_create failed");
    for (int i = 0; i < raw.n && !rc; i++) {
        const segment *g = &raw.v[i];
        if (g->id >= 0) {
            rc = push_id(&out, g->id, e);
            continue;
        }
        const char *p = text + g->start;
        size_t plen = g->end - g->start;
        utf8proc_uint8_t *nf = NULL;
        if (t->nfc) {
            utf8proc_ssize_t k = utf8proc_map((const utf8proc_uint8_t *)p, (utf8proc_ssize_t)plen, &nf,
                                              UTF8PROC_STABLE | UTF8PROC_COMPOSE);
            if (k < 0) {
                rc = qd_errf(e, QD_ERUNTIME, "utf8proc_map (NFC) failed: %s", utf8proc_errmsg(k));
                break;
            }
            p = (const char *)nf;
            plen = (size_t)k;
        }
        norm.n = 0;
        if (t->any_normalized_added) rc = find_added(t, 1, p, plen, &norm, e);
        else rc = push_seg(&norm, 0, plen, -1, e);
        for (int j = 0; j < norm.n && !rc; j++) {
            const segment *h = &norm.v[j];
            rc =
                h->id >= 0 ? push_id(&out, h->id, e) : encode_text(t, p + h->start, h->end - h->start, md, &s, &out, e);
        }
        free(nf);
    }
    pcre2_match_data_free(md);
    free(raw.v);
    free(norm.v);
    free(s.id), free(s.prev), free(s.next), free(s.gone), free(s.heap), free(s.mapped);
    if (rc) {
        free(out.v);
        return rc;
    }
    *ids = out.v;
    *n = out.n;
    return QD_OK;
}

// ----------------------------------------------------------------------------
// decoding

/* One token's bytes, as tokenizers' ByteLevel decoder: each character's byte when every character stands
 * for a byte, else the token's text as it is. Appends to buf (room for len bytes assumed). */
static size_t token_bytes(const qd_tokenizer *t, const char *tok, size_t len, char *buf) {
    size_t k = 0;
    for (size_t i = 0; i < len;) {
        utf8proc_int32_t c;
        utf8proc_ssize_t n = utf8proc_iterate((const utf8proc_uint8_t *)tok + i, (utf8proc_ssize_t)(len - i), &c);
        int b = n > 0 && c >= 0 && c < 324 ? t->cp_byte[c] : -1;
        if (b < 0) {
            memcpy(buf, tok, len);
            return len;
        }
        buf[k++] = (char)b;
        i += (size_t)n;
    }
    return k;
}

/* The length of the valid UTF-8 sequence at s (1..4), or -(the length of its maximal invalid prefix). */
static int utf8_seq(const unsigned char *s, size_t n) {
    unsigned char b = s[0];
    if (b < 0x80) return 1;
    int need;
    unsigned char lo = 0x80, hi = 0xBF;
    if (b >= 0xC2 && b <= 0xDF) need = 1;
    else if (b >= 0xE0 && b <= 0xEF) need = 2, lo = b == 0xE0 ? 0xA0 : 0x80, hi = b == 0xED ? 0x9F : 0xBF;
    else if (b >= 0xF0 && b <= 0xF4) need = 3, lo = b == 0xF0 ? 0x90 : 0x80, hi = b == 0xF4 ? 0x8F : 0xBF;
    else return -1;
    for (int i = 1; i <= need; i++) {
        if ((size_t)i >= n || s[i] < lo || s[i] > hi) return -i;
        lo = 0x80, hi = 0xBF;
    }
    return need + 1;
}

int qd_tok_decode(const qd_tokenizer *t, const int32_t *ids, int n, char **out, size_t *len, qd_err *e) {
    *out = NULL;
    size_t total = 0;
    for (int i = 0; i < n; i++)
        if (ids[i] >= 0 && ids[i] < t->n_ids && t->id_text[ids[i]]) total += t->id_len[ids[i]];
    char *bytes = qd_alloc(total + 1, e);
    /* every invalid byte may become U+FFFD (3 bytes) */
    char *text = bytes ? qd_alloc(3 * total + 1, e) : NULL;
    if (!text) {
        free(bytes);
        return QD_ERUNTIME;
    }
    size_t k = 0, m = 0;
    for (int i = 0; i < n; i++)
        if (ids[i] >= 0 && ids[i] < t->n_ids && t->id_text[ids[i]])
            k += token_bytes(t, t->id_text[ids[i]], t->id_len[ids[i]], bytes + k);
    for (size_t i = 0; i < k;) { /* String::from_utf8_lossy */
        int q = utf8_seq((const unsigned char *)bytes + i, k - i);
        if (q > 0) {
            memcpy(text + m, bytes + i, (size_t)q);
            m += (size_t)q, i += (size_t)q;
        } else {
            memcpy(text + m, "\xEF\xBF\xBD", 3);
            m += 3, i += (size_t)-q;
        }
    }
    free(bytes);
    text[m] = '\0';
    *out = text;
    if (len) *len = m;
    return QD_OK;
}

size_t qd_tok_token_text(const qd_tokenizer *t, int32_t id, char *buf, size_t n) {
    if (!n) return 0;
    buf[0] = '\0';
    if (id < 0 || id >= t->n_ids || !t->id_text[id])
        return (size_t)snprintf(buf, n, "<id %d>", id) < n ? strlen(buf) : n - 1;
    char raw[512];
    size_t len = t->id_len[id] < sizeof raw ? t->id_len[id] : sizeof raw; /* longer tokens are cut for display */
    size_t k = token_bytes(t, t->id_text[id], len, raw), m = 0;
    for (size_t i = 0; i < k;) {
        unsigned char c = (unsigned char)raw[i];
        int q = utf8_seq((const unsigned char *)raw + i, k - i);
        char esc[8];
        const char *chunk = raw + i;
        size_t plen = q > 0 ? (size_t)q : 1;
        if (c == '\n' || c == '\r' || c == '\t' || c == '\\') {
            snprintf(esc, sizeof esc, "\\%c", c == '\n' ? 'n' : c == '\r' ? 'r' : c == '\t' ? 't' : '\\');
            chunk = esc, plen = 2;
        } else if (q < 0 || c < 0x20 || c == 0x7F) {
            snprintf(esc, sizeof esc, "\\x%02X", c);
            chunk = esc, plen = 4;
        }
        if (m + plen >= n) break;
        memcpy(buf + m, chunk, plen);
        m += plen;
        i += q > 0 ? (size_t)q : 1;
    }
    buf[m] = '\0';
    return m;
}
