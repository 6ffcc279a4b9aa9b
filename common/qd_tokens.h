/* qd_tokens.h: token id lists from the command line: "5,17,3" or "@FILE" (ids separated by commas
 * and/or whitespace). Every id must be a non-negative decimal integer < vocab_size. Errors are QD_EINPUT
 * naming the argument or file and the offending item: empty list, non-numeric item, id >= vocab. */
#ifndef QD_TOKENS_H
#define QD_TOKENS_H

#include <stdint.h>

#include "qd_util.h"

int qd_tokens_parse(const char *arg, int vocab_size, int32_t **tokens, int *n, qd_err *e);

/* The largest id count when the model sets no max_position_embeddings: the longest Qwen3 context
 * (the 2507 releases' 262144 positions). */
#define QD_TOKENS_MAX_DEFAULT 262144

/* qd_tokens_parse with at most max_ids ids (the model's max_position_embeddings; <= 0 or above
 * QD_TOKENS_MAX_DEFAULT: QD_TOKENS_MAX_DEFAULT). A tokens file must be a regular file (a FIFO or a device
 * is refused before anything is read) of at most 16 * max_ids + 4096 bytes (10 digits and a separator per
 * id, with room for CRLF and padding); more ids than max_ids is QD_EINPUT. qd_tokens_parse is this with
 * max_ids 0. */
int qd_tokens_parse_max(const char *arg, int vocab_size, int max_ids, int32_t **tokens, int *n, qd_err *e);

#endif
