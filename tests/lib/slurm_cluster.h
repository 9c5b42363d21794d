/*
 * The one-node test Slurm of deploy/slurm-up.sh for tests and benchmarks:
 * starts it in a fresh state dir under /tmp, reads the settings the script
 * prints, and makes sure it never outlives the program (an atexit handler,
 * and a watchdog child in its own session for a program that is killed).
 * What each test then checks stays in the test.
 */
#ifndef MERIDIAN_TESTS_SLURM_CLUSTER_H
#define MERIDIAN_TESTS_SLURM_CLUSTER_H

#include <stddef.h>
#include <sys/types.h>

/* What slurm-up.sh printed (KEY='value' lines), and its state. */
struct t_slurm {
	char top[1024];	 /* $MERIDIAN_TOP or "." */
	char state[256]; /* the state dir (/tmp/meridian-<tag>.XXXXXX) */
	char conf[512];	 /* SLURM_CONF */
	char sock[512];	 /* SLURMRESTD_SOCKET */
	char partition[64];
	char node[64];
	char model[64];	    /* SLURM_GPU_MODEL */
	char versions[128]; /* SLURMRESTD_OPENAPI, newest first */
	char job_dir[512];  /* where jobs may write */
	long cpus, memory_mb, gpus;
	char *up_log; /* slurm-up.sh's stderr when it failed */
	int up;	      /* started (maybe half) and not yet down */
	int watchdog_fd;
	pid_t watchdog;
};

/*
 * Runs deploy/slurm-up.sh --state <new dir> <args> (args: extra options,
 * already shell-quoted, or NULL) and fills s. Returns 0 when the cluster is
 * up; MER_EUNSUPPORTED when the script says Slurm cannot run here (exit 3:
 * not root, packages not installable); MER_ENOTFOUND when the script is
 * missing; MER_EIO when it failed; MER_EPARSE when its output lacks a
 * setting. On failure s->up_log (malloc'd, may be NULL) holds the script's
 * stderr, and *status (may be NULL) its exit status (-1: did not run or
 * exit normally). Whatever was started is brought down at exit, or by
 * t_slurm_down. One cluster per program.
 */
int t_slurm_up(struct t_slurm *s, const char *tag, const char *args,
	       int *status);

/* The command that brings the cluster down (slurm-down.sh --purge, its
 * stdout discarded). */
void t_slurm_down_cmd(const struct t_slurm *s, char *cmd, size_t n);

/* Runs that command (even when s->up is 0: running it on a stopped
 * cluster must succeed too), stops the watchdog and clears s->up. Returns
 * the command's exit status (-1 when it did not exit normally). */
int t_slurm_down(struct t_slurm *s);

/* Runs sh -c cmd; its stdout in *out (malloc'd, NUL-terminated) and its
 * exit status in *status (-1 when it did not exit normally). */
int t_run_cmd(const char *cmd, char **out, int *status);

/* The value of a KEY='value' line in text (as slurm-up.sh prints them):
 * MER_ENOTFOUND when no line has it, MER_EPARSE when it does not fit. */
int t_env_value(const char *text, const char *key, char *out, size_t n);

#endif
