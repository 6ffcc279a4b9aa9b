/* qd_progress.h: the progress line of a long run, with its ETA, on stderr.
 *
 * A run counts its work in units (layers weighted by tokens, bytes written, ...) and reports how many are
 * done; qd_progress decides whether and how that is shown:
 *   QD_PROGRESS_TTY    one line rewritten in place ("\r"), at most 10 times a second, cleared at the end;
 *   QD_PROGRESS_LINES  plain lines for logs (CI), the first after one interval and then at most one per
 *                      interval (10 s; the environment variable QD_PROGRESS_INTERVAL=SECONDS overrides it),
 *                      so a short run prints nothing and a long one a bounded number of lines;
 *   QD_PROGRESS_OFF    nothing (--quiet).
 * The line: "<what>: <label>, 42 % done, 12.3 s elapsed, ETA 17 s". The ETA extrapolates the rate so far.
 * The clock can be replaced (tests drive it by hand); by default it is CLOCK_MONOTONIC. Library code that
 * reports progress takes a qd_progress * (NULL: none) and knows nothing of terminals or options. */
#ifndef QD_PROGRESS_H
#define QD_PROGRESS_H

#include <stdio.h>

typedef enum { QD_PROGRESS_OFF = 0, QD_PROGRESS_TTY, QD_PROGRESS_LINES } qd_progress_mode;

#define QD_PROGRESS_INTERVAL 10.0   /* seconds between plain lines: a 10-minute run writes ~60 lines to a log */
#define QD_PROGRESS_TTY_REFRESH 0.1 /* seconds between rewrites of the terminal line */

typedef struct {
    FILE *f;
    qd_progress_mode mode;
    char what[32];           /* the line's prefix, e.g. "qwen3-diff" */
    double total;            /* units of work; <= 0: unknown (no percentage, no ETA) */
    double interval;         /* QD_PROGRESS_LINES: seconds between lines */
    double (*clock)(void *); /* seconds on a monotonic clock; NULL: CLOCK_MONOTONIC */
    void *clock_ctx;
    double t0, last; /* start, last line printed (t0 when none yet) */
    int shown;       /* a terminal line is on screen */
    long lines;      /* lines printed so far (both modes) */
} qd_progress;

/* The mode for stream f: OFF when quiet, TTY on a terminal, LINES otherwise. */
qd_progress_mode qd_progress_mode_for(FILE *f, int quiet);

/* Starts p: nothing is printed yet. clock NULL: CLOCK_MONOTONIC. */
void qd_progress_start(qd_progress *p, FILE *f, qd_progress_mode mode, const char *what, double total,
                       double (*clock)(void *), void *clock_ctx);

/* `done` units of the total are done; label says where the run is ("prompt, layer 3/28"). Prints when
 * the mode and the rate allow. */
void qd_progress_update(qd_progress *p, double done, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* The run is over (or failed): the terminal line is cleared. p may be NULL. */
void qd_progress_end(qd_progress *p);

/* "12 s", "3 min 05 s", "1 h 02 min": a duration for people. */
void qd_progress_duration(double seconds, char *buf, size_t n);

#endif
