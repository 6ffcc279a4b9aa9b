/* timeline.c: per-launch and per-kernel summaries of a decode step's block timeline (qd_timeline.h). */
#include "qd_timeline.h"
#include "qd_util.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *const kernel_names[QD_TL_KINDS] = {"q/k/v", "attention", "o_proj", "gate/up", "down_proj", "head"};

const char *qd_tl_kernel(int launch, int n_layers) {
    if (launch < 0 || n_layers < 0 || launch > n_layers * QD_TL_SLOTS) return NULL;
    return launch == n_layers * QD_TL_SLOTS ? kernel_names[QD_TL_SLOTS] : kernel_names[launch % QD_TL_SLOTS];
}

int qd_tl_launches(const qd_tl_rec *r, int n, int n_layers, qd_tl_launch *out, int cap, qd_err *e) {
    const int ids = n_layers * QD_TL_SLOTS + 1;
    if (n_layers < 0 || cap < 0) {
        qd_errf(e, QD_EINPUT, "timeline: %d layers, room for %d launches", n_layers, cap);
        return -1;
    }
    int *slot = qd_alloc((size_t)ids * sizeof *slot, e); /* (ids) launch id -> index in out, or -1 */
    if (!slot) return -1;
    for (int i = 0; i < ids; i++) slot[i] = -1;
    for (int i = 0; i < n; i++)
        if (r[i].launch < 0 || r[i].launch >= ids) {
            qd_errf(e, QD_EINPUT, "timeline: a record names a launch outside the chain (launch %d, %d layers)",
                    r[i].launch, n_layers);
            free(slot);
            return -1;
        } else {
            slot[r[i].launch] = 0;
        }
    int m = 0;
    for (int id = 0; id < ids; id++) { /* launch order */
        if (slot[id] < 0) continue;
        if (m == cap) {
            qd_errf(e, QD_EINPUT, "timeline: more launches than the room for %d", cap);
            free(slot);
            return -1;
        }
        qd_tl_launch *l = &out[m];
        memset(l, 0, sizeof *l);
        l->launch = id;
        l->layer = id == n_layers * QD_TL_SLOTS ? -1 : id / QD_TL_SLOTS;
        l->kernel = qd_tl_kernel(id, n_layers);
        l->start_first = l->wait_first = l->end_first = INFINITY;
        l->start_last = l->wait_last = l->ready_last = l->end_last = -INFINITY;
        l->mark_last = -1;
        slot[id] = m++;
    }
    for (int i = 0; i < n; i++) {
        qd_tl_launch *l = &out[slot[r[i].launch]];
        l->blocks++;
        l->start_first = fmin(l->start_first, r[i].start);
        l->start_last = fmax(l->start_last, r[i].start);
        l->wait_first = fmin(l->wait_first, r[i].wait);
        l->wait_last = fmax(l->wait_last, r[i].wait);
        l->ready_last = fmax(l->ready_last, r[i].ready);
        l->end_first = fmin(l->end_first, r[i].end);
        l->end_last = fmax(l->end_last, r[i].end);
        if (r[i].mark >= 0) l->mark_last = fmax(l->mark_last, r[i].mark);
    }
    free(slot);
    return m;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* median of v[0..n) (sorts v); 0 for n == 0 */
static double median(double *v, int n) {
    if (n == 0) return 0;
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

int qd_tl_kinds(const qd_tl_launch *l, int n, qd_tl_kind out[QD_TL_KINDS], qd_err *e) {
    const int cap = n > 0 ? n : 1;
    double *a = qd_alloc((size_t)cap * 6 * sizeof *a, e); /* (6, cap): per-kind a, b, c, d, t and m below */
    if (!a) return QD_ERUNTIME;
    double *b = a + cap, *c = b + cap, *d = c + cap, *t = d + cap, *m = t + cap;
    for (int k = 0; k < QD_TL_KINDS; k++) {
        int na = 0, nc = 0, nm = 0;
        for (int i = 0; i < n; i++) {
            const int kind = l[i].layer < 0 ? QD_TL_SLOTS : l[i].launch % QD_TL_SLOTS;
            if (kind != k) continue;
            a[na] = l[i].end_last - l[i].wait_first;
            b[na] = l[i].end_last - l[i].ready_last;
            d[na] = l[i].wait_last - l[i].wait_first;
            t[na++] = l[i].end_last - l[i].end_first;
            if (l[i].mark_last >= 0) m[nm++] = l[i].end_last - l[i].mark_last;
            if (i + 1 < n) c[nc++] = l[i + 1].wait_first - l[i].end_last;
        }
        out[k].kernel = kernel_names[k];
        out[k].launches = na;
        out[k].after_wait = median(a, na);
        out[k].after_ready = median(b, na);
        out[k].gap_to_next = median(c, nc);
        out[k].wait_spread = median(d, na);
        out[k].tail = median(t, na);
        out[k].marked = nm;
        out[k].after_mark = median(m, nm);
    }
    free(a);
    return QD_OK;
}
