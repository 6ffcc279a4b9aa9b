/* qd_json.h: small helpers over jansson shared by every reader of JSON (config.json, safetensors headers,
 * tolerance files). */
#ifndef QD_JSON_H
#define QD_JSON_H

#include <jansson.h>

/* "an object", "an integer", "null", ...: for messages like "field 'x': expected a number, found a string". */
const char *qd_json_type_name(const json_t *v);

#endif
