/* lists.h: the catalogs qwen3-diff prints on request: --list-taps (every tap in data-flow order with what
 * it holds) and --list-faults (the fault catalog: where each fault applies and what it needs to show). */
#ifndef QD_TOOLS_LISTS_H
#define QD_TOOLS_LISTS_H

#include <stdio.h>

void qd_list_taps(FILE *f);
void qd_list_faults(FILE *f);

#endif
