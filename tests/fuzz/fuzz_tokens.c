/* fuzz_tokens.c: libFuzzer target on the --tokens parser (qd_tokens.h), both of its sources.
 *
 * Input: byte 0 picks vocab_size, byte 1 max_ids (from the edges: 1, the tiny model's 16, Qwen3's
 * 151936, INT32_MAX; max_ids 0 means the default, values past the default are clamped); the rest is the
 * token list. It is parsed twice:
 *   - as the argument itself ("5,17,3"; the text up to its first NUL, as argv would hold it);
 *   - as a tokens file ("--tokens @FILE", the bytes as they are, NULs included).
 * What is accepted must hold the contract: at least one id, no more than max_ids, each in [0, vocab).
 * A refusal is a one-line message (fuzz_util.h). The two sources share one grammar, so when the bytes
 * hold no NUL and fit the file's size limit, both must agree: the same verdict and the same ids.
 * Seeds: corpus/tokens/ (the fixtures' prompt.txt files and hand-made edge cases). */
#include <stdint.h>
#include <string.h>

#include "fuzz_util.h"
#include "qd_tokens.h"

static const int vocabs[] = {1, 16, 151936, INT32_MAX};
static const int max_ids_of[] = {0, 1, 4, 64, QD_TOKENS_MAX_DEFAULT, QD_TOKENS_MAX_DEFAULT + 1, -1, 3};

static void check_ids(int rc, const qd_err *e, const int32_t *ids, int n, int vocab, int max_ids) {
    if (rc != QD_OK) {
        fuzz_check_refusal(rc, e);
        fuzz_check(ids == NULL && n == 0);
        return;
    }
    fuzz_check(ids != NULL && n >= 1 && n <= max_ids);
    for (int i = 0; i < n; i++) fuzz_check(ids[i] >= 0 && ids[i] < vocab);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 2) return 0;
    const int vocab = vocabs[data[0] % 4];
    const int max_arg = max_ids_of[data[1] % 8];
    const int max_ids = max_arg <= 0 || max_arg > QD_TOKENS_MAX_DEFAULT ? QD_TOKENS_MAX_DEFAULT : max_arg;
    data += 2;
    size -= 2;

    char *arg = fuzz_cstr(data, size);
    int32_t *ids_a = NULL;
    int n_a = 0;
    qd_err ea;
    qd_err_clear(&ea);
    int rc_a = qd_tokens_parse_max(arg, vocab, max_arg, &ids_a, &n_a, &ea);
    check_ids(rc_a, &ea, ids_a, n_a, vocab, max_ids);

    const char *path = fuzz_put("tokens", "tokens.txt", data, size);
    char at[2100];
    snprintf(at, sizeof at, "@%s", path);
    int32_t *ids_f = NULL;
    int n_f = 0;
    qd_err ef;
    qd_err_clear(&ef);
    int rc_f = qd_tokens_parse_max(at, vocab, max_arg, &ids_f, &n_f, &ef);
    check_ids(rc_f, &ef, ids_f, n_f, vocab, max_ids);

    /* the file source adds a size limit and refuses NUL bytes; anything else, the sources agree. An
     * argument starting with '@' names a file, so it is not the same list. */
    int comparable = strlen(arg) == size && size <= (size_t)max_ids * 16 + 4096 && arg[0] != '@';
    if (comparable) {
        fuzz_check(rc_a == rc_f && n_a == n_f);
        if (rc_a == QD_OK) fuzz_check(memcmp(ids_a, ids_f, (size_t)n_a * sizeof *ids_a) == 0);
    }
    free(ids_a);
    free(ids_f);
    free(arg);
    return 0;
}
