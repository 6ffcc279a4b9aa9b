/* qd_tokens.h: token id lists from the command line: "5,17,3" or "@FILE" (ids separated by commas
 * and/or whitespace). Every id must be a non-negative decimal integer < vocab_size. Errors are QD_EINPUT
 * naming the argument or file and the offending item: empty list, non-numeric item, id >= vocab. */
#ifndef QD_TOKENS_H
#define QD_TOKENS_H

#include <stdint.h>

#include "qd_util.h"

int qd_tokens_parse(const char *arg, int vocab_size, int32_t **tokens, int *n, qd_err *e);

#endif
