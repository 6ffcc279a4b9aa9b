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

#include "qd_util.h"

#define QD_TMP_SLOTS 8 /* a run writes one dump and one report at a time; 8 leaves room */

/* Registers path (copied). QD_ERUNTIME when the table is full or the path longer than PATH_MAX. */
int qd_tmp_register(const char *path, qd_err *e);
/* Forgets path (after its rename or unlink); a path not registered is ignored. */
void qd_tmp_forget(const char *path);
/* Installs the handlers (once; a signal the process ignores stays ignored) and the exit() hook.
 * QD_ERUNTIME naming sigaction or atexit when they fail. */
int qd_tmp_cleanup_on_signals(qd_err *e);

/* Output and input paths of one command line, checked together before anything is opened: each entry
 * is (kind, flag, path) and the list ends with QD_PATH_END; a NULL path is skipped. Refused (QD_EINPUT,
 * one line naming both flags): two outputs naming the same file, an output naming an input, an output
 * that exists and is not a regular file (a directory, a FIFO, a device). Two names are the same file
 * when they are the same inode, or (for a file not created yet) the same canonical directory and base
 * name. An input given as FILE:GROUP (the compare operands) is taken as FILE when FILE:GROUP does not
 * exist. */
enum { QD_PATH_END = 0, QD_PATH_IN = 1, QD_PATH_OUT = 2 };
int qd_check_paths(qd_err *e, ...);

/* "a directory", "a FIFO", "a character device", ... for a st_mode that is not a regular file. */
const char *qd_file_kind(unsigned st_mode);

#endif
