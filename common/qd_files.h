/* qd_files.h: the files of a run beyond reading and writing them: temporary files that a signal must not
 * leave behind, and output paths that must not collide with each other or with an input.
 *
 * Temporary files (an output is written to PATH.tmp.<pid>, then renamed): a writer registers the
 * temporary name before creating it and forgets it once it was renamed or removed. After
 * qd_tmp_cleanup_on_signals(), SIGHUP, SIGINT, SIGQUIT and SIGTERM unlink every registered file and then
 * re-raise the signal with its default action, so the exit status still says which signal ended the run;
 * exit() (e.g. an allocation failure in code that still exits) unlinks them too. The handler only calls
 * unlink(), sigaction() and raise(), which are async-signal-safe; the registry is a fixed table written
 * before the file exists, so the handler never sees half a name. Registration is for one thread (the
 * one that creates the files); the handler may run on any thread. */
#ifndef QD_FILES_H
#define QD_FILES_H

#include <limits.h>
#include <stdio.h>

#include "qd_util.h"

#define QD_TMP_SLOTS 8 /* a run writes one dump and one report at a time; 8 leaves room */

/* Registers path (copied). QD_ERUNTIME when the table is full or the path longer than PATH_MAX. */
int qd_tmp_register(const char *path, qd_err *e);
/* Forgets path (after its rename or unlink); a path not registered is ignored. */
void qd_tmp_forget(const char *path);
/* Installs the handlers (once; a signal the process ignores stays ignored) and the exit() hook.
 * QD_ERUNTIME naming sigaction or atexit when they fail. */
int qd_tmp_cleanup_on_signals(qd_err *e);

/* Output files: the one way every writer opens its output (reports, tolerance files, dumps, repro files).
 *
 *   "-"                    stdout (streams only), written in place
 *   /dev/stdout, /dev/stderr, /dev/fd/N, /proc/self/fd/N
 *                          that descriptor of this process, written in place (streams only); never
 *                          renamed over, so a run as root cannot replace /dev/stdout with a file
 *   a regular file, or a path that does not exist
 *                          written to PATH.tmp.<pid> (registered above) and renamed onto PATH when
 *                          complete, so the final name holds either the old file or the whole new one
 *   a symbolic link        followed to its final target, which is then treated as above (a dangling
 *                          link creates its target); the link itself is left as it is
 *   a FIFO, a device       written in place (streams only)
 *   a directory, a socket  refused
 * A seekable output (HDF5) takes only the atomic case: "-", a descriptor, a FIFO or a device is refused
 * with one line (QD_EINPUT). */
typedef struct {
    char path[PATH_MAX];     /* as given, for messages */
    char final[PATH_MAX];    /* the file renamed onto; "" when written in place */
    char tmp[PATH_MAX + 32]; /* what is written until qd_out_commit: final.tmp.<pid>; "" in place */
    FILE *f;                 /* the stream (qd_out_open); NULL for qd_out_open_seekable */
} qd_out;

/* Opens a stream output; o->f is where to write. */
int qd_out_open(qd_out *o, const char *path, qd_err *e);
/* Reserves the temporary name of a seekable output (o->tmp): the caller creates and closes that file
 * itself (H5Fcreate), then commits or aborts. */
int qd_out_open_seekable(qd_out *o, const char *path, qd_err *e);
/* Finishes the output: flush and close the stream, fsync and rename the temporary file onto its final
 * name. On failure the temporary file is removed; QD_ERUNTIME naming the failing call. */
int qd_out_commit(qd_out *o, qd_err *e);
/* Abandons the output: closes the stream, removes the temporary file (nothing under the final name). */
void qd_out_abort(qd_out *o);

/* 1 when path is "-" or names this process's stdout (/dev/stdout, /dev/fd/1, /proc/self/fd/1, or a
 * symbolic link to one of them). */
int qd_out_is_stdout(const char *path);
/* From here on "-" (and the names of stdout) go to the process's stdout as it is now, and fd 1, where the
 * text report is printed, becomes a copy of stderr: a document written to stdout stays alone there (e.g.
 * `--json - | jq`). QD_ERUNTIME naming dup or dup2. */
int qd_out_claim_stdout(qd_err *e);

/* Output and input paths of one command line, checked together before anything is opened: each entry
 * is (kind, flag, path) and the list ends with QD_PATH_END; a NULL path is skipped. Refused (QD_EINPUT,
 * one line naming both flags): two outputs naming the same file, an output naming an input, an output
 * (QD_PATH_OUT, a seekable file) that is "-" or exists and is not a regular file (a directory, a FIFO, a
 * device), a stream output (QD_PATH_STREAM) that is a directory or a socket. Two names are the same file
 * when they are the same inode, or (for a file not created yet) the same canonical directory and base
 * name; "-" is stdout's file, and two character devices other than stdout (e.g. /dev/null twice) do not
 * collide. An input given as FILE:GROUP (the compare operands) is taken as FILE when FILE:GROUP does not
 * exist. */
enum { QD_PATH_END = 0, QD_PATH_IN = 1, QD_PATH_OUT = 2, QD_PATH_STREAM = 3 };
int qd_check_paths(qd_err *e, ...);

/* "a directory", "a FIFO", "a character device", ... for a st_mode that is not a regular file. */
const char *qd_file_kind(unsigned st_mode);

#endif
