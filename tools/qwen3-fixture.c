/* qwen3-fixture: writes a synthetic Qwen3 checkpoint directory in Hugging Face layout.
 *
 *   DIR/config.json          in either dialect (released: rope_theta + torch_dtype; hf5: rope_parameters
 *                            + dtype + layer_types)
 *   DIR/model.safetensors    or --shards N: model-0000i-of-0000N.safetensors + model.safetensors.index.json
 *   DIR/prompt.txt           with --prompt-len N: N token ids in [0, vocab), whitespace separated
 *
 * The weights are random but deterministic: every tensor draws from its own splitmix64 stream seeded by
 * (--seed, tensor name), so the same seed gives the same bytes whatever the sharding or tensor order.
 *   linear weights  N(0, 1/sqrt(in_features))   keeps activations O(1) through every projection
 *   embedding       N(0, 1)                      so the residual stream starts O(1)
 *   norm weights    1 + N(0, 0.2)                never all ones, so a missing weight multiply shows
 *   k_norm of layer L with --k-norm-stats L:MAX:STD: exactly that max and population std (after rounding
 *                   to the stored dtype, to 3 significant digits): a positive bulk plus one outlier,
 *                   the shape of Qwen3's extreme k_norm vectors.
 * Tensors are generated chunk by chunk while the file is written (qd_st_write_stream), so memory stays
 * bounded even for the 8b preset.
 *
 * Exit codes: 0 ok, 2 usage or bad option value (one line on stderr), 3 I/O failure naming the call. */
#include <dirent.h>
#include <errno.h>
#include <fnmatch.h>
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "qd_bf16.h"
#include "qd_progress.h"
#include "qd_safetensors.h"
#include "qd_st_stream.h"
#include "qd_util.h"

#define PROG "qwen3-fixture"

// ----------------------------------------------------------------------------
// errors: usage -> exit 2, I/O -> exit 3 (only main's helpers exit)

static void die_usage(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die_usage(const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, PROG ": %s (see --help)\n", msg);
    exit(QD_EINPUT);
}

static void die_io(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die_io(const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, PROG ": %s\n", msg);
    exit(QD_ERUNTIME);
}

static void die_err(const qd_err *e) {
    fprintf(stderr, PROG ": %s\n", e->msg);
    exit(e->code ? e->code : QD_ERUNTIME);
}

/* Allocation for the tool: a failure goes out through die_err, its message naming the call's file and
 * line (macros, so qd_alloc's __LINE__ is the caller's). */
static qd_err alloc_err;
static void *alloc_or_die(void *p) {
    if (!p) die_err(&alloc_err);
    return p;
}
#define ALLOC(n) alloc_or_die(qd_alloc((n), &alloc_err))
#define ZALLOC(count, size) alloc_or_die(qd_zalloc((count), (size), &alloc_err))
#define PATH_JOIN(dir, name) ((char *)alloc_or_die(qd_path_join((dir), (name), &alloc_err)))

// ----------------------------------------------------------------------------
// PRNG: splitmix64 (one stream per tensor) and Box-Muller normals

typedef struct {
    uint64_t s;
    int has_spare;
    double spare;
} rng_t;

static uint64_t splitmix64(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* Stream for one named object: FNV-1a of the name mixed with the seed, then one splitmix scramble so
 * nearby seeds give unrelated streams. */
static void rng_init(rng_t *r, uint64_t seed, const char *name) {
    uint64_t h = 0xcbf29ce484222325ULL;
    for (const unsigned char *p = (const unsigned char *)name; *p; p++) h = (h ^ *p) * 0x100000001b3ULL;
    uint64_t s = h ^ (seed * 0x9e3779b97f4a7c15ULL);
    r->s = splitmix64(&s);
    r->has_spare = 0;
    r->spare = 0.0;
}

static double rng_uniform(rng_t *r) { return (double)(splitmix64(&r->s) >> 11) * 0x1.0p-53; } /* [0,1) */

static double rng_normal(rng_t *r) {
    if (r->has_spare) {
        r->has_spare = 0;
        return r->spare;
    }
    double u1 = 1.0 - rng_uniform(r), u2 = rng_uniform(r); /* u1 in (0,1]: log is finite */
    double rad = sqrt(-2.0 * log(u1)), th = 6.283185307179586 * u2;
    r->spare = rad * sin(th);
    r->has_spare = 1;
    return rad * cos(th);
}

/* Uniform in [0, n) without modulo bias. */
static uint64_t rng_below(rng_t *r, uint64_t n) {
    uint64_t lim = UINT64_MAX - UINT64_MAX % n, x;
    do x = splitmix64(&r->s);
    while (x >= lim);
    return x % n;
}

// ----------------------------------------------------------------------------
// options

typedef struct {
    int layer;
    double max, std;
} knorm_stat;

typedef struct {
    int vocab, hidden, intermediate, layers, heads, kv_heads, head_dim, max_pos, tied;
    double theta, eps;
    qd_dtype dtype;
    int hf5; /* config dialect: 0 released, 1 transformers 5.x */
    int shards;
    uint64_t seed;
    int prompt_len;
    const char *out;
    int force;
    int quiet;          /* no progress line */
    knorm_stat *kstats; /* (nkstats) */
    int nkstats;
} opts_t;

static void usage(FILE *f) {
    fprintf(f, "usage: " PROG " --out DIR [options]\n"
               "Writes a synthetic Qwen3 checkpoint (config.json, model.safetensors, optional prompt.txt).\n"
               "\n"
               "  --out DIR              output directory (created; an existing non-empty one needs --force)\n"
               "  --force                overwrite the files this tool writes in an existing directory\n"
               "  --preset NAME          tiny (default) | 0.6b | 1.7b | 4b | 8b | 14b | 32b (released shapes)\n"
               "  --vocab N --hidden N --intermediate N --layers N --heads N --kv-heads N --head-dim N\n"
               "  --theta X --eps X --tied 0|1 --max-pos N\n"
               "                         override single fields of the preset\n"
               "  --dtype bf16|f16|f32   stored weight dtype (default bf16)\n"
               "  --dialect released|hf5 config.json dialect (default released)\n"
               "  --shards N             write N shards and model.safetensors.index.json (default 1)\n"
               "  --seed S               PRNG seed (default 1); same seed, same bytes\n"
               "  --k-norm-stats L:MAX:STD[,L:MAX:STD...]\n"
               "                         give layer L's k_norm weight exactly that max and population std\n"
               "  --prompt-len N         also write prompt.txt with N token ids\n"
               "  --quiet                no progress on stderr (by default: a live line on a terminal, else\n"
               "                         a line every 10 s with the ETA; an 8b checkpoint takes minutes)\n"
               "  --help                 this text\n"
               "\n"
               "example (Qwen3's extreme k_norm statistics on a small model):\n"
               "  " PROG " --out fx --vocab 1024 --hidden 128 --heads 4 --kv-heads 2 --head-dim 64 \\\n"
               "      --intermediate 256 --layers 4 --tied 1 --dialect hf5 --prompt-len 16 \\\n"
               "      --k-norm-stats 0:96.5:9.13,1:44.5:3.98,2:44.0:3.94\n");
}

static long long parse_int(const char *opt, const char *s, long long lo, long long hi) {
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        die_usage("%s: '%s' is not an integer in [%lld, %lld]", opt, s, lo, hi);
    return v;
}

static double parse_pos_real(const char *opt, const char *s) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v) || v <= 0.0)
        die_usage("%s: '%s' is not a positive finite number", opt, s);
    return v;
}

static void set_preset(opts_t *o, const char *name) {
    /* tiny keeps head_dim != hidden/heads (32 vs 16) like the released sizes do (128 vs 64 for 0.6B). */
    static const struct {
        const char *name;
        int vocab, hidden, intermediate, layers, heads, kv_heads, head_dim, tied;
    } presets[] = {
        {"tiny", 256, 64, 128, 2, 4, 2, 32, 1},          {"0.6b", 151936, 1024, 3072, 28, 16, 8, 128, 1},
        {"1.7b", 151936, 2048, 6144, 28, 16, 8, 128, 1}, {"4b", 151936, 2560, 9728, 36, 32, 8, 128, 1},
        {"8b", 151936, 4096, 12288, 36, 32, 8, 128, 0},  {"14b", 151936, 5120, 17408, 40, 40, 8, 128, 0},
        {"32b", 151936, 5120, 25600, 64, 64, 8, 128, 0},
    };
    for (size_t i = 0; i < sizeof presets / sizeof presets[0]; i++) {
        if (strcmp(presets[i].name, name) == 0) {
            o->vocab = presets[i].vocab;
            o->hidden = presets[i].hidden;
            o->intermediate = presets[i].intermediate;
            o->layers = presets[i].layers;
            o->heads = presets[i].heads;
            o->kv_heads = presets[i].kv_heads;
            o->head_dim = presets[i].head_dim;
            o->tied = presets[i].tied;
            o->theta = 1e6;
            o->eps = 1e-6;
            o->max_pos = 40960;
            return;
        }
    }
    die_usage("--preset: unknown preset '%s' (tiny, 0.6b, 1.7b, 4b, 8b, 14b, 32b)", name);
}

static void parse_kstats(opts_t *o, const char *arg) {
    char *s = strdup(arg), *save = NULL;
    if (!s) die_io("strdup failed");
    for (char *item = strtok_r(s, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
        char *c1 = strchr(item, ':'), *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
        if (!c1 || !c2) die_usage("--k-norm-stats: item '%s' is not L:MAX:STD", item);
        *c1 = *c2 = '\0';
        knorm_stat k;
        k.layer = (int)parse_int("--k-norm-stats layer", item, 0, 1 << 20);
        k.max = parse_pos_real("--k-norm-stats max", c1 + 1);
        k.std = parse_pos_real("--k-norm-stats std", c2 + 1);
        o->kstats = realloc(o->kstats, (size_t)(o->nkstats + 1) * sizeof *o->kstats);
        if (!o->kstats) die_io("realloc failed");
        o->kstats[o->nkstats++] = k;
    }
    free(s);
    if (o->nkstats == 0) die_usage("--k-norm-stats: empty list");
}

static void parse_args(int argc, char **argv, opts_t *o) {
    enum {
        O_OUT = 256,
        O_FORCE,
        O_PRESET,
        O_VOCAB,
        O_HIDDEN,
        O_INTER,
        O_LAYERS,
        O_HEADS,
        O_KV,
        O_HD,
        O_THETA,
        O_EPS,
        O_TIED,
        O_MAXPOS,
        O_DTYPE,
        O_DIALECT,
        O_SHARDS,
        O_SEED,
        O_KSTATS,
        O_PROMPT,
        O_QUIET,
        O_HELP
    };
    static const struct option longopts[] = {{"out", required_argument, 0, O_OUT},
                                             {"force", no_argument, 0, O_FORCE},
                                             {"preset", required_argument, 0, O_PRESET},
                                             {"vocab", required_argument, 0, O_VOCAB},
                                             {"hidden", required_argument, 0, O_HIDDEN},
                                             {"intermediate", required_argument, 0, O_INTER},
                                             {"layers", required_argument, 0, O_LAYERS},
                                             {"heads", required_argument, 0, O_HEADS},
                                             {"kv-heads", required_argument, 0, O_KV},
                                             {"head-dim", required_argument, 0, O_HD},
                                             {"theta", required_argument, 0, O_THETA},
                                             {"eps", required_argument, 0, O_EPS},
                                             {"tied", required_argument, 0, O_TIED},
                                             {"max-pos", required_argument, 0, O_MAXPOS},
                                             {"dtype", required_argument, 0, O_DTYPE},
                                             {"dialect", required_argument, 0, O_DIALECT},
                                             {"shards", required_argument, 0, O_SHARDS},
                                             {"seed", required_argument, 0, O_SEED},
                                             {"k-norm-stats", required_argument, 0, O_KSTATS},
                                             {"prompt-len", required_argument, 0, O_PROMPT},
                                             {"quiet", no_argument, 0, O_QUIET},
                                             {"help", no_argument, 0, O_HELP},
                                             {0, 0, 0, 0}};

    memset(o, 0, sizeof *o);
    o->dtype = QD_DT_BF16;
    o->shards = 1;
    o->seed = 1;

    /* The preset is applied first wherever it appears, so explicit fields always override it. */
    const char *preset = "tiny";
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--preset") == 0 && i + 1 < argc) preset = argv[i + 1];
        else if (strncmp(argv[i], "--preset=", 9) == 0) preset = argv[i] + 9;
        else if (strcmp(argv[i], "--") == 0) break;
    }
    set_preset(o, preset);

    const int big = 1 << 24; /* far above any real size; keeps every product within int64 */
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":", longopts, NULL)) != -1) {
        switch (c) {
        case O_OUT: o->out = optarg; break;
        case O_FORCE: o->force = 1; break;
        case O_PRESET: break; /* applied above */
        case O_VOCAB: o->vocab = (int)parse_int("--vocab", optarg, 1, big); break;
        case O_HIDDEN: o->hidden = (int)parse_int("--hidden", optarg, 1, big); break;
        case O_INTER: o->intermediate = (int)parse_int("--intermediate", optarg, 1, big); break;
        case O_LAYERS: o->layers = (int)parse_int("--layers", optarg, 1, 4096); break;
        case O_HEADS: o->heads = (int)parse_int("--heads", optarg, 1, 4096); break;
        case O_KV: o->kv_heads = (int)parse_int("--kv-heads", optarg, 1, 4096); break;
        case O_HD: o->head_dim = (int)parse_int("--head-dim", optarg, 2, 4096); break;
        case O_THETA: o->theta = parse_pos_real("--theta", optarg); break;
        case O_EPS: o->eps = parse_pos_real("--eps", optarg); break;
        case O_TIED: o->tied = (int)parse_int("--tied", optarg, 0, 1); break;
        case O_MAXPOS: o->max_pos = (int)parse_int("--max-pos", optarg, 1, big); break;
        case O_DTYPE:
            if (strcmp(optarg, "bf16") == 0) o->dtype = QD_DT_BF16;
            else if (strcmp(optarg, "f16") == 0) o->dtype = QD_DT_F16;
            else if (strcmp(optarg, "f32") == 0) o->dtype = QD_DT_F32;
            else die_usage("--dtype: unknown dtype '%s' (bf16, f16, f32)", optarg);
            break;
        case O_DIALECT:
            if (strcmp(optarg, "released") == 0) o->hf5 = 0;
            else if (strcmp(optarg, "hf5") == 0) o->hf5 = 1;
            else die_usage("--dialect: unknown dialect '%s' (released, hf5)", optarg);
            break;
        case O_SHARDS: o->shards = (int)parse_int("--shards", optarg, 1, 99999); break;
        case O_SEED: o->seed = (uint64_t)parse_int("--seed", optarg, 0, INT64_MAX); break;
        case O_KSTATS: parse_kstats(o, optarg); break;
        case O_PROMPT: o->prompt_len = (int)parse_int("--prompt-len", optarg, 0, 1 << 24); break;
        case O_QUIET: o->quiet = 1; break;
        case O_HELP: usage(stdout); exit(0);
        case ':': die_usage("option %s needs a value", argv[optind - 1]);
        default: die_usage("unknown option '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc) die_usage("unexpected argument '%s'", argv[optind]);
    if (!o->out) die_usage("--out DIR is required");
    if (o->heads % o->kv_heads != 0) die_usage("--heads %d is not a multiple of --kv-heads %d", o->heads, o->kv_heads);
    if (o->head_dim % 2 != 0) die_usage("--head-dim %d must be even (rotate-half RoPE)", o->head_dim);
    for (int i = 0; i < o->nkstats; i++) {
        if (o->kstats[i].layer >= o->layers)
            die_usage("--k-norm-stats: layer %d >= --layers %d", o->kstats[i].layer, o->layers);
        for (int j = 0; j < i; j++)
            if (o->kstats[j].layer == o->kstats[i].layer)
                die_usage("--k-norm-stats: layer %d given twice", o->kstats[i].layer);
    }
}

// ----------------------------------------------------------------------------
// tensors

typedef enum { T_EMBED, T_LINEAR, T_NORM, T_KNORM_STATS } tkind;

typedef struct {
    char name[96];
    int ndim;
    int64_t shape[2];
    tkind kind;
    double std;        /* T_LINEAR: 1/sqrt(in_features) */
    const float *vals; /* T_KNORM_STATS: (head_dim) values already rounded to the dtype */
} tspec;

static float round_dtype(qd_dtype dt, double x) {
    float f = (float)x;
    if (dt == QD_DT_BF16) return qd_round_bf16(f);
    if (dt == QD_DT_F16) return qd_round_f16(f);
    return f;
}

static void add_tensor(tspec *t, int *n, const char *name, int ndim, int64_t d0, int64_t d1, tkind kind, double std) {
    tspec *s = &t[(*n)++];
    memset(s, 0, sizeof *s);
    snprintf(s->name, sizeof s->name, "%s", name);
    s->ndim = ndim;
    s->shape[0] = d0;
    s->shape[1] = d1;
    s->kind = kind;
    s->std = std;
}

/* Tensors in module order (embedding, each layer as modeling_qwen3 declares it, final norm, lm_head). */
static tspec *build_tensors(const opts_t *o, float **knorm_vals, int *n_out) {
    int64_t C = o->hidden, I = o->intermediate, V = o->vocab, HD = o->head_dim;
    int64_t QD = (int64_t)o->heads * HD, KVD = (int64_t)o->kv_heads * HD;
    int cap = 3 + 11 * o->layers, n = 0;
    tspec *t = ZALLOC((size_t)cap, sizeof *t); /* (cap) */
    char nm[96];
    add_tensor(t, &n, "model.embed_tokens.weight", 2, V, C, T_EMBED, 1.0);
    for (int l = 0; l < o->layers; l++) {
#define NAME(suffix) (snprintf(nm, sizeof nm, "model.layers.%d.%s", l, suffix), nm)
        add_tensor(t, &n, NAME("input_layernorm.weight"), 1, C, 0, T_NORM, 0);
        add_tensor(t, &n, NAME("self_attn.q_proj.weight"), 2, QD, C, T_LINEAR, 1.0 / sqrt((double)C));
        add_tensor(t, &n, NAME("self_attn.k_proj.weight"), 2, KVD, C, T_LINEAR, 1.0 / sqrt((double)C));
        add_tensor(t, &n, NAME("self_attn.v_proj.weight"), 2, KVD, C, T_LINEAR, 1.0 / sqrt((double)C));
        add_tensor(t, &n, NAME("self_attn.o_proj.weight"), 2, C, QD, T_LINEAR, 1.0 / sqrt((double)QD));
        add_tensor(t, &n, NAME("self_attn.q_norm.weight"), 1, HD, 0, T_NORM, 0);
        add_tensor(t, &n, NAME("self_attn.k_norm.weight"), 1, HD, 0, knorm_vals[l] ? T_KNORM_STATS : T_NORM, 0);
        t[n - 1].vals = knorm_vals[l];
        add_tensor(t, &n, NAME("post_attention_layernorm.weight"), 1, C, 0, T_NORM, 0);
        add_tensor(t, &n, NAME("mlp.gate_proj.weight"), 2, I, C, T_LINEAR, 1.0 / sqrt((double)C));
        add_tensor(t, &n, NAME("mlp.up_proj.weight"), 2, I, C, T_LINEAR, 1.0 / sqrt((double)C));
        add_tensor(t, &n, NAME("mlp.down_proj.weight"), 2, C, I, T_LINEAR, 1.0 / sqrt((double)I));
#undef NAME
    }
    add_tensor(t, &n, "model.norm.weight", 1, C, 0, T_NORM, 0);
    if (!o->tied) add_tensor(t, &n, "lm_head.weight", 2, V, C, T_LINEAR, 1.0 / sqrt((double)C));
    *n_out = n;
    return t;
}

// ----------------------------------------------------------------------------
// k_norm vectors with prescribed max and population std

/* The representable neighbour of x (itself representable) one step up (dir > 0) or down. */
static float step_dtype(qd_dtype dt, float x, int dir) {
    if (dt == QD_DT_F32) return nextafterf(x, dir > 0 ? INFINITY : -INFINITY);
    uint16_t h = dt == QD_DT_BF16 ? qd_f32_to_bf16(x) : qd_f32_to_f16(x);
    if ((h & 0x7fffu) == 0) return x;       /* +-0: leave it */
    int away = (dir > 0) == !(h & 0x8000u); /* away from zero: larger magnitude */
    h = (uint16_t)(away ? h + 1 : h - 1);
    return dt == QD_DT_BF16 ? qd_bf16_to_f32(h) : qd_f16_to_f32(h);
}

static double pop_std(const float *x, int n) {
    double m = 0, v = 0;
    for (int i = 0; i < n; i++) m += x[i];
    m /= n;
    for (int i = 0; i < n; i++) v += ((double)x[i] - m) * ((double)x[i] - m);
    return sqrt(v / n);
}

static int same_3sig(double a, double b) {
    char sa[32], sb[32];
    snprintf(sa, sizeof sa, "%.3g", a);
    snprintf(sb, sizeof sb, "%.3g", b);
    return strcmp(sa, sb) == 0;
}

/* The vector is one outlier M at a random position plus a bulk a + t*b*g_j (g: n-1 clipped normals,
 * standardised). With the outlier k bulk-sigmas above the bulk mean (M = a + k*b), the population std
 * of the whole vector is S^2 = (n-1)/n * ((M-a)^2/n + b^2), so b = S'/sqrt(1 + k^2/n) with
 * S' = S*sqrt(n/(n-1)). k is chosen so that a = 3b (bulk positive at 3 sigma); where that is out of
 * reach, the nearest k. Finally t is bisected so the std of the dtype-rounded vector hits S. */
static float *make_knorm(const opts_t *o, const knorm_stat *ks) {
    int n = o->head_dim;
    /* refused before anything is allocated: die_usage exits, and what it leaves allocated is a leak */
    double M = round_dtype(o->dtype, ks->max), S = ks->std;
    if (!isfinite(M) || !same_3sig(M, ks->max))
        die_usage("--k-norm-stats: max %g of layer %d is not representable in the weight dtype to 3 "
                  "significant digits (nearest %g)",
                  ks->max, ks->layer, M);
    float *w = ALLOC((size_t)n * sizeof *w);        /* (head_dim) */
    double *g = ALLOC((size_t)(n - 1) * sizeof *g); /* (head_dim - 1) */
    char name[96];
    snprintf(name, sizeof name, "model.layers.%d.self_attn.k_norm.weight", ks->layer);
    rng_t r;
    rng_init(&r, o->seed, name);

    double gm = 0, gs = 0, gmax = 0;
    for (int j = 0; j < n - 1; j++) {
        double z = rng_normal(&r);
        g[j] = z < -2.5 ? -2.5 : z > 2.5 ? 2.5 : z;
        gm += g[j];
    }
    gm /= n - 1;
    for (int j = 0; j < n - 1; j++) gs += (g[j] - gm) * (g[j] - gm);
    gs = sqrt(gs / (n - 1));
    for (int j = 0; j < n - 1; j++) {
        g[j] = gs > 0 ? (g[j] - gm) / gs : 0.0;
        if (g[j] > gmax) gmax = g[j];
    }
    int p = (int)rng_below(&r, (uint64_t)n);

    double Sp = S * sqrt((double)n / (n - 1));
    double kmin = gmax + 0.5, kpeak = n / 3.0; /* h(k) = (k+3)/sqrt(1+k^2/n) rises up to k = n/3 */
#define H(k) (((k) + 3.0) / sqrt(1.0 + (k) * (k) / n))
    double R = M / Sp, k;
    if (kmin >= kpeak || R <= H(kmin)) k = kmin;
    else if (R >= H(kpeak)) k = kpeak;
    else {
        double lo = kmin, hi = kpeak;
        for (int it = 0; it < 100; it++) {
            double mid = 0.5 * (lo + hi);
            if (H(mid) < R) lo = mid;
            else hi = mid;
        }
        k = 0.5 * (lo + hi);
    }
#undef H
    double b = Sp / sqrt(1.0 + k * k / n), a = M - k * b;
    if (a <= 0)
        die_usage("--k-norm-stats: std %g is too large for max %g with head_dim %d (the vector would be "
                  "mostly negative)",
                  S, ks->max, n);

    /* std(round(w(t))) is a step function of t, close to increasing; bisect and keep the best. Upper
     * end keeps every bulk value below M. */
    double tlo = 0.0, thi = gmax > 0 ? fmin(2.0, 0.999 * (M - a) / (b * gmax)) : 2.0;
    double best_t = 1.0, best_err = INFINITY;
    for (int it = 0; it < 200; it++) {
        double t = it == 0 ? 1.0 : 0.5 * (tlo + thi);
        for (int i = 0, j = 0; i < n; i++) w[i] = i == p ? (float)M : round_dtype(o->dtype, a + t * b * g[j++]);
        double s = pop_std(w, n), err = fabs(s - S);
        if (err < best_err) {
            best_err = err;
            best_t = t;
        }
        if (it == 0) continue;
        if (s < S) tlo = t;
        else thi = t;
    }
    for (int i = 0, j = 0; i < n; i++) w[i] = i == p ? (float)M : round_dtype(o->dtype, a + best_t * b * g[j++]);
    /* One dtype ulp of a bulk value moves the std by ~1e-4 relative (bf16, head_dim 64), close to the
     * 3-digit tolerance; nudge single values by one ulp while that brings the std nearer to S. */
    for (int pass = 0; pass < 50; pass++) {
        int improved = 0;
        for (int i = 0; i < n; i++) {
            if (i == p) continue;
            for (int dir = -1; dir <= 1; dir += 2) {
                float old = w[i], cand = step_dtype(o->dtype, old, dir);
                if (!(cand < (float)M) || !isfinite(cand)) continue;
                double before = fabs(pop_std(w, n) - S);
                w[i] = cand;
                if (fabs(pop_std(w, n) - S) < before) improved = 1;
                else w[i] = old;
            }
        }
        if (!improved) break;
    }
    float wmax = w[0];
    for (int i = 1; i < n; i++) wmax = w[i] > wmax ? w[i] : wmax;
    double s = pop_std(w, n);
    if (wmax != (float)M || !same_3sig(s, S))
        die_usage("--k-norm-stats: cannot realise layer %d max %g std %g in the weight dtype (got max %g "
                  "std %g)",
                  ks->layer, ks->max, S, wmax, s);
    free(g);
    return w;
}

// ----------------------------------------------------------------------------
// the fill callback: generates each tensor's values in order, chunk by chunk

typedef struct {
    const opts_t *o;
    const tspec *t;  /* the tensors of the file being written (entries[i] is t[i]) */
    uint64_t s0;     /* the current tensor's stream: its rng_init state */
    qd_progress *pg; /* bytes generated, over every shard */
    double done;
} gen_ctx;

/* Normal number j of the stream that rng_init left in state s0, without walking it: splitmix64 is a
 * counter (call k returns mix(s0 + k * gamma)) and rng_normal draws its k-th pair of normals from calls
 * 2k+1 and 2k+2, the cosine for j = 2k and the sine for j = 2k+1. So normal_at(s0, j) is bitwise the
 * j-th rng_normal of that stream, and chunks of a tensor can be generated in parallel. */
static void normal_pair_at(uint64_t s0, uint64_t k, double *c, double *s) {
    uint64_t a = s0 + (2 * k) * 0x9e3779b97f4a7c15ULL, b = a + 0x9e3779b97f4a7c15ULL;
    double u1 = 1.0 - (double)(splitmix64(&a) >> 11) * 0x1.0p-53, u2 = (double)(splitmix64(&b) >> 11) * 0x1.0p-53;
    double rad = sqrt(-2.0 * log(u1)), th = 6.283185307179586 * u2;
    *c = rad * cos(th);
    *s = rad * sin(th);
}

static void store_value(qd_dtype dt, unsigned char *out, size_t i, double x) {
    float f = (float)x;
    if (dt == QD_DT_F32) {
        uint32_t u;
        memcpy(&u, &f, 4);
        for (int b = 0; b < 4; b++) out[4 * i + (size_t)b] = (unsigned char)(u >> (8 * b));
    } else {
        uint16_t h = dt == QD_DT_BF16 ? qd_f32_to_bf16(f) : qd_f32_to_f16(f);
        out[2 * i] = (unsigned char)(h & 0xff);
        out[2 * i + 1] = (unsigned char)(h >> 8);
    }
}

static double scaled(const tspec *t, double z) {
    if (t->kind == T_EMBED) return z;
    if (t->kind == T_LINEAR) return t->std * z;
    return 1.0 + 0.2 * z; /* T_NORM */
}

static int fill_tensor(void *vctx, int index, size_t offset, void *buf, size_t nbytes, qd_err *e) {
    (void)e;
    gen_ctx *g = vctx;
    const tspec *t = &g->t[index];
    qd_dtype dt = g->o->dtype;
    size_t es = qd_dtype_size(dt), n = nbytes / es, first = offset / es;
    unsigned char *out = buf;
    if (offset == 0) {
        rng_t r;
        rng_init(&r, g->o->seed, t->name);
        g->s0 = r.s;
    }
    g->done += (double)nbytes;
    qd_progress_update(g->pg, g->done, "%s", t->name);
    if (t->kind == T_KNORM_STATS) {
        for (size_t i = 0; i < n; i++) store_value(dt, out, i, t->vals[first + i]);
        return QD_OK;
    }
    /* element first + i is normal number first + i of the stream; pairs split across threads */
    const long long p0 = (long long)(first / 2), p1 = (long long)((first + n + 1) / 2);
#pragma omp parallel for schedule(static)
    for (long long p = p0; p < p1; p++) {
        double z[2];
        normal_pair_at(g->s0, (uint64_t)p, &z[0], &z[1]);
        for (int k = 0; k < 2; k++) {
            size_t j = 2 * (size_t)p + (size_t)k;
            if (j >= first && j < first + n) store_value(dt, out, j - first, scaled(t, z[k]));
        }
    }
    return QD_OK;
}

// ----------------------------------------------------------------------------
// files

/* Writes text to path through path.tmp.<pid> + rename, like the safetensors writer. */
static void write_text(const char *path, const char *text) {
    size_t len = strlen(path) + 32;
    char *tmp = ALLOC(len);
    snprintf(tmp, len, "%s.tmp.%ld", path, (long)getpid());
    FILE *f = fopen(tmp, "wb");
    if (!f) die_io("fopen(%s): %s", tmp, strerror(errno));
    size_t n = strlen(text);
    if (fwrite(text, 1, n, f) != n) {
        int err = errno;
        fclose(f);
        remove(tmp);
        die_io("fwrite(%s): %s", tmp, strerror(err));
    }
    if (fclose(f) != 0) {
        int err = errno;
        remove(tmp);
        die_io("fclose(%s): %s", tmp, strerror(err));
    }
    if (rename(tmp, path) != 0) {
        int err = errno;
        remove(tmp);
        die_io("rename(%s, %s): %s", tmp, path, strerror(err));
    }
    free(tmp);
}

static char *dump_json(json_t *j) {
    /* 15 significant digits: decimal inputs like 1e-6 come back as written, and still round-trip. */
    char *s = json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(15));
    if (!s) die_io("json_dumps failed");
    size_t n = strlen(s);
    char *t = ALLOC(n + 2);
    memcpy(t, s, n);
    t[n] = '\n';
    t[n + 1] = '\0';
    free(s);
    return t;
}

static const char *dtype_torch_name(qd_dtype d) {
    return d == QD_DT_BF16 ? "bfloat16" : d == QD_DT_F16 ? "float16" : "float32";
}

static void write_config(const opts_t *o, const char *dir) {
    json_t *c = json_object();
    json_t *arch = json_array();
    json_array_append_new(arch, json_string("Qwen3ForCausalLM"));
    json_object_set_new(c, "architectures", arch);
    json_object_set_new(c, "attention_bias", json_false());
    json_object_set_new(c, "attention_dropout", json_real(0.0));
    /* the released ids where the vocabulary has them, else the last two ids */
    int real_vocab = o->vocab >= 151936;
    json_object_set_new(c, "bos_token_id", json_integer(real_vocab ? 151643 : o->vocab > 1 ? o->vocab - 2 : 0));
    json_object_set_new(c, "eos_token_id", json_integer(real_vocab ? 151645 : o->vocab - 1));
    json_object_set_new(c, "head_dim", json_integer(o->head_dim));
    json_object_set_new(c, "hidden_act", json_string("silu"));
    json_object_set_new(c, "hidden_size", json_integer(o->hidden));
    json_object_set_new(c, "initializer_range", json_real(0.02));
    json_object_set_new(c, "intermediate_size", json_integer(o->intermediate));
    if (o->hf5) {
        json_t *lt = json_array();
        for (int l = 0; l < o->layers; l++) json_array_append_new(lt, json_string("full_attention"));
        json_object_set_new(c, "layer_types", lt);
    }
    json_object_set_new(c, "max_position_embeddings", json_integer(o->max_pos));
    json_object_set_new(c, "max_window_layers", json_integer(o->layers));
    json_object_set_new(c, "model_type", json_string("qwen3"));
    json_object_set_new(c, "num_attention_heads", json_integer(o->heads));
    json_object_set_new(c, "num_hidden_layers", json_integer(o->layers));
    json_object_set_new(c, "num_key_value_heads", json_integer(o->kv_heads));
    json_object_set_new(c, "rms_norm_eps", json_real(o->eps));
    if (o->hf5) {
        json_t *rp = json_object();
        json_object_set_new(rp, "rope_theta", json_real(o->theta));
        json_object_set_new(rp, "rope_type", json_string("default"));
        json_object_set_new(c, "rope_parameters", rp);
    } else {
        json_object_set_new(c, "rope_scaling", json_null());
        /* released files write an integral theta as an integer (1000000) */
        if (o->theta == floor(o->theta) && o->theta < 9e15)
            json_object_set_new(c, "rope_theta", json_integer((json_int_t)o->theta));
        else json_object_set_new(c, "rope_theta", json_real(o->theta));
    }
    json_object_set_new(c, "sliding_window", json_null());
    json_object_set_new(c, "tie_word_embeddings", json_boolean(o->tied));
    json_object_set_new(c, o->hf5 ? "dtype" : "torch_dtype", json_string(dtype_torch_name(o->dtype)));
    json_object_set_new(c, "use_cache", json_true());
    json_object_set_new(c, "use_sliding_window", json_false());
    json_object_set_new(c, "vocab_size", json_integer(o->vocab));
    char *text = dump_json(c);
    json_decref(c);
    char *path = PATH_JOIN(dir, "config.json");
    write_text(path, text);
    free(path);
    free(text);
}

static void write_prompt(const opts_t *o, const char *dir) {
    rng_t r;
    rng_init(&r, o->seed, "prompt.txt");
    size_t cap = (size_t)o->prompt_len * 12 + 2, len = 0;
    char *text = ALLOC(cap);
    for (int i = 0; i < o->prompt_len; i++) {
        int sep = (i + 1) % 16 == 0 || i + 1 == o->prompt_len ? '\n' : ' ';
        len += (size_t)snprintf(text + len, cap - len, "%llu%c", (unsigned long long)rng_below(&r, (uint64_t)o->vocab),
                                sep);
    }
    text[len] = '\0';
    char *path = PATH_JOIN(dir, "prompt.txt");
    write_text(path, text);
    free(path);
    free(text);
}

static int is_our_file(const char *name) {
    return strcmp(name, "config.json") == 0 || strcmp(name, "model.safetensors") == 0 ||
           strcmp(name, "model.safetensors.index.json") == 0 || strcmp(name, "prompt.txt") == 0 ||
           fnmatch("model-[0-9][0-9][0-9][0-9][0-9]-of-[0-9][0-9][0-9][0-9][0-9].safetensors", name, 0) == 0;
}

/* Creates dir (and parents). An existing non-empty dir needs --force, and then only the files this tool
 * writes are removed, so no stale shard or index from an earlier run is left to be picked up. */
static void prepare_dir(const opts_t *o) {
    struct stat st;
    if (stat(o->out, &st) == 0) {
        if (!S_ISDIR(st.st_mode)) die_usage("--out %s: exists and is not a directory", o->out);
        DIR *d = opendir(o->out);
        if (!d) die_io("opendir(%s): %s", o->out, strerror(errno));
        struct dirent *de;
        int nonempty = 0;
        while ((de = readdir(d))) {
            if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0) continue;
            nonempty = 1;
            if (o->force && is_our_file(de->d_name)) {
                char *p = PATH_JOIN(o->out, de->d_name);
                if (remove(p) != 0) die_io("remove(%s): %s", p, strerror(errno));
                free(p);
            }
        }
        closedir(d);
        if (nonempty && !o->force)
            die_usage("--out %s: directory exists and is not empty (use --force to overwrite)", o->out);
        return;
    }
    char *p = strdup(o->out);
    if (!p) die_io("strdup failed");
    for (char *s = p + 1;; s++) {
        if (*s == '/' || *s == '\0') {
            char c = *s;
            *s = '\0';
            if (mkdir(p, 0777) != 0 && errno != EEXIST) die_io("mkdir(%s): %s", p, strerror(errno));
            *s = c;
            if (!c) break;
        }
    }
    free(p);
}

static void write_weights(const opts_t *o, const tspec *t, int n) {
    qd_st_entry *en = ZALLOC((size_t)n, sizeof *en); /* (n) */
    size_t *nb = ZALLOC((size_t)n, sizeof *nb);      /* (n) byte size of each tensor */
    unsigned long long total = 0;
    for (int i = 0; i < n; i++) {
        en[i].name = t[i].name;
        en[i].dtype = o->dtype;
        en[i].ndim = t[i].ndim;
        en[i].shape[0] = t[i].shape[0];
        en[i].shape[1] = t[i].shape[1];
        nb[i] = qd_st_entry_nbytes(&en[i]);
        total += nb[i];
    }
    const char *meta = "{\"format\": \"pt\"}"; /* what transformers writes */
    qd_progress pg;
    qd_progress_start(&pg, stderr, qd_progress_mode_for(stderr, o->quiet), PROG, (double)total, NULL, NULL);
    gen_ctx g = {.o = o, .pg = &pg};
    qd_err e;
    qd_err_clear(&e);
    if (o->shards == 1) {
        g.t = t;
        char *path = PATH_JOIN(o->out, "model.safetensors");
        if (qd_st_write_stream(path, en, n, meta, fill_tensor, &g, &e)) die_err(&e);
        free(path);
    } else {
        /* Contiguous runs of tensors, cut where the running byte count crosses s/N of the total, with at
         * least one tensor per shard. */
        json_t *wm = json_object();
        int begin = 0;
        unsigned long long cum = 0;
        for (int s = 0; s < o->shards; s++) {
            int end = begin + 1;
            cum += nb[begin];
            while (end < n - (o->shards - 1 - s) &&
                   (s == o->shards - 1 || cum + nb[end] / 2 <= total * (unsigned long long)(s + 1) / o->shards)) {
                cum += nb[end];
                end++;
            }
            char fname[64];
            snprintf(fname, sizeof fname, "model-%05d-of-%05d.safetensors", s + 1, o->shards);
            g.t = t + begin;
            char *path = PATH_JOIN(o->out, fname);
            if (qd_st_write_stream(path, en + begin, end - begin, meta, fill_tensor, &g, &e)) die_err(&e);
            free(path);
            for (int i = begin; i < end; i++) json_object_set_new(wm, t[i].name, json_string(fname));
            begin = end;
        }
        json_t *idx = json_object(), *md = json_object();
        json_object_set_new(md, "total_size", json_integer((json_int_t)total));
        json_object_set_new(idx, "metadata", md);
        json_object_set_new(idx, "weight_map", wm);
        char *text = dump_json(idx);
        json_decref(idx);
        char *path = PATH_JOIN(o->out, "model.safetensors.index.json");
        write_text(path, text);
        free(path);
        free(text);
    }
    qd_progress_end(&pg);
    free(nb);
    free(en);
}

// ----------------------------------------------------------------------------

int main(int argc, char **argv) {
    opts_t o;
    parse_args(argc, argv, &o);

    float **knorm = ZALLOC((size_t)o.layers, sizeof *knorm); /* (layers) NULL or (head_dim) */
    for (int i = 0; i < o.nkstats; i++) knorm[o.kstats[i].layer] = make_knorm(&o, &o.kstats[i]);
    int n;
    tspec *t = build_tensors(&o, knorm, &n);
    if (o.shards > n) die_usage("--shards %d exceeds the number of tensors (%d)", o.shards, n);

    prepare_dir(&o);
    write_config(&o, o.out);
    write_weights(&o, t, n);
    if (o.prompt_len > 0) write_prompt(&o, o.out);

    for (int l = 0; l < o.layers; l++) free(knorm[l]);
    free(knorm);
    free(t);
    free(o.kstats);
    return 0;
}
