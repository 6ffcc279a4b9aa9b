/* progress.c: the progress line of a long run (qd_progress.h). */
#include "qd_progress.h"

#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double monotonic(void *ctx) {
    (void)ctx;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

qd_progress_mode qd_progress_mode_for(FILE *f, int quiet) {
    if (quiet || !f) return QD_PROGRESS_OFF;
    return isatty(fileno(f)) ? QD_PROGRESS_TTY : QD_PROGRESS_LINES;
}

void qd_progress_start(qd_progress *p, FILE *f, qd_progress_mode mode, const char *what, double total,
                       double (*clock)(void *), void *clock_ctx) {
    memset(p, 0, sizeof *p);
    p->f = f;
    p->mode = f ? mode : QD_PROGRESS_OFF;
    snprintf(p->what, sizeof p->what, "%s", what ? what : "");
    p->total = total;
    p->clock = clock ? clock : monotonic;
    p->clock_ctx = clock_ctx;
    p->interval = QD_PROGRESS_INTERVAL;
    const char *env = getenv("QD_PROGRESS_INTERVAL");
    if (env && *env) {
        char *end;
        double v = strtod(env, &end);
        if (!*end && isfinite(v) && v >= 0) p->interval = v;
    }
    p->t0 = p->last = p->clock(p->clock_ctx);
}

void qd_progress_duration(double s, char *buf, size_t n) {
    if (!(s >= 0) || !isfinite(s)) snprintf(buf, n, "?");
    else if (s < 10) snprintf(buf, n, "%.1f s", s);
    else if (s < 60) snprintf(buf, n, "%.0f s", s);
    else if (s < 3600) snprintf(buf, n, "%d min %02d s", (int)(s / 60), (int)fmod(s, 60));
    else snprintf(buf, n, "%d h %02d min", (int)(s / 3600), (int)fmod(s / 60, 60));
}

void qd_progress_update(qd_progress *p, double done, const char *fmt, ...) {
    if (!p || p->mode == QD_PROGRESS_OFF) return;
    double now = p->clock(p->clock_ctx);
    double gap = p->mode == QD_PROGRESS_TTY ? QD_PROGRESS_TTY_REFRESH : p->interval;
    /* plain lines: the first one only after an interval, so short runs stay silent */
    if (p->mode == QD_PROGRESS_TTY ? p->shown && now - p->last < gap : now - p->last < gap) return;
    char label[256], line[512], el[32], eta[32];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(label, sizeof label, fmt, ap);
    va_end(ap);
    double elapsed = now - p->t0;
    qd_progress_duration(elapsed, el, sizeof el);
    if (p->total > 0 && done > 0) {
        double frac = done < p->total ? done / p->total : 1.0;
        qd_progress_duration(elapsed * (1.0 - frac) / frac, eta, sizeof eta);
        snprintf(line, sizeof line, "%s: %s, %.0f %% done, %s elapsed, ETA %s", p->what, label, 100.0 * frac, el, eta);
    } else {
        snprintf(line, sizeof line, "%s: %s, %s elapsed", p->what, label, el);
    }
    if (p->mode == QD_PROGRESS_TTY) fprintf(p->f, "\r\033[K%s", line);
    else fprintf(p->f, "%s\n", line);
    fflush(p->f);
    p->shown = p->mode == QD_PROGRESS_TTY;
    p->last = now;
    p->lines++;
}

void qd_progress_end(qd_progress *p) {
    if (!p || !p->shown) return;
    fprintf(p->f, "\r\033[K");
    fflush(p->f);
    p->shown = 0;
}
