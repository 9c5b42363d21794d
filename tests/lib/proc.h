/*
 * Process and file utilities for integration tests: free loopback ports,
 * child processes that cannot outlive the test, readiness waits, temp dirs
 * and whole-file reads. For tests only; nothing in common/ uses this.
 *
 * Every spawned child is recorded in a registry. The registry stops all
 * children (SIGTERM, then SIGKILL) at exit() and when the test receives
 * SIGINT, SIGTERM or SIGHUP; each child also has PR_SET_PDEATHSIG=SIGKILL, so
 * it dies even if the test is killed with SIGKILL or crashes. A test case
 * that fails half-way therefore leaks no process, as long as it (or the
 * program) ends by returning or calling exit(). Temp dirs from t_tmpdir
 * are cleaned up the same way.
 */
#ifndef MERIDIAN_TESTS_PROC_H
#define MERIDIAN_TESTS_PROC_H

#include <stddef.h>
#include <sys/types.h>

/* Finds a free TCP port on 127.0.0.1 (binds port 0, reads it, closes).
 * Another process may take it before you do; callers that can, retry. */
int t_free_port(int *port);

struct t_proc;

/*
 * Starts path (an absolute or relative path, not searched in $PATH) with
 * argv (NULL-terminated, argv[0] included) and the test's environment plus
 * env (NULL or a NULL-terminated list of "NAME=value", which override).
 * stdin is /dev/null; stdout and stderr are appended to log_path (created
 * 0644). The child runs in its own process group, so stopping it also stops
 * what it forked. PR_SET_PDEATHSIG fires when the *thread* that spawned the
 * child exits: spawn from the main thread (or one that lives as long).
 * Returns 0 with *out set; MER_EIO when the program cannot be started (the
 * reason is in the log file).
 */
int t_proc_spawn(const char *path, char *const argv[], char *const env[],
		 const char *log_path, struct t_proc **out);

/* The child's pid (also its process group id). */
pid_t t_proc_pid(const struct t_proc *p);

/* Non-zero if the child has exited (reaps it; then *status, if given, is the
 * waitpid status). Does not block. */
int t_proc_exited(struct t_proc *p, int *status);

/*
 * Stops the child: SIGTERM to its group, waits up to grace_ms, then SIGKILL,
 * and reaps it. *status (may be NULL) gets the waitpid status. Frees p and
 * removes it from the registry; accepts NULL. Returns 0, or MER_ETIMEDOUT if
 * SIGKILL was needed.
 */
int t_proc_stop(struct t_proc *p, int grace_ms, int *status);

/* Stops every registered child (what the atexit handler does). */
void t_proc_stop_all(void);

/* Waits until 127.0.0.1:port accepts a TCP connection; MER_ETIMEDOUT after
 * timeout_ms. */
int t_wait_port(int port, int timeout_ms);

/*
 * Waits until url answers with a 2xx status: a GET, or a POST of body when
 * body is not NULL. Retries every 50 ms; MER_ETIMEDOUT after timeout_ms.
 * If p is not NULL and the process exits meanwhile, gives up at once with
 * MER_ECLOSED.
 */
int t_wait_http(const char *url, const char *body, int timeout_ms,
		struct t_proc *p);

/* As t_wait_http, for https URLs: verifies the server with ca_file and
 * presents cert_file/key_file when not NULL. */
int t_wait_https(const char *url, const char *body, const char *ca_file,
		 const char *cert_file, const char *key_file, int timeout_ms,
		 struct t_proc *p);

/* Test PKI made with the openssl command line tool: a CA, a server
 * certificate for IP 127.0.0.1 and "localhost", and a client certificate
 * (CN "meridian-test-client"), all EC P-256 and valid for a day. */
struct t_certs {
	char ca[4096];
	char server_cert[4096];
	char server_key[4096];
	char client_cert[4096];
	char client_key[4096];
};

/* Writes the files into dir (which must exist); openssl's output goes to
 * dir/openssl.log. MER_EIO when openssl is missing or fails. */
int t_make_certs(const char *dir, struct t_certs *out);

/* Creates a fresh directory $TMPDIR/meridian-<tag>-XXXXXX (or under /tmp)
 * and returns its malloc'd path. The dir is registered: if the test does
 * not remove it (t_rmtree), it is removed at exit or on SIGINT/SIGTERM/
 * SIGHUP, after the registered processes are stopped. MERIDIAN_KEEP_TMP=1
 * keeps them for debugging. */
int t_tmpdir(const char *tag, char **out);

/* Removes a directory tree (does not follow symlinks). Accepts NULL. */
int t_rmtree(const char *path);

/* Reads a whole file into a malloc'd, NUL-terminated buffer. *len may be
 * NULL. MER_EIO when it cannot be read. */
int t_read_file(const char *path, char **out, size_t *len);

/* Milliseconds on the monotonic clock, and a sleep that resumes after
 * signals. */
long long t_now_ms(void);
void t_sleep_ms(int ms);

#endif
