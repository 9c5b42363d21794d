/*
 * Starts and stops the test Slurm of deploy/slurm-up.sh for test programs
 * and benchmarks (tests/lib/slurm_cluster.h). Not a Slurm client: the
 * tests talk to it themselves (the agent's adapter, sbatch, curl).
 */
#include "tests/lib/slurm_cluster.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/err.h"
#include "tests/lib/proc.h"

/* The cluster the atexit handler brings down (one per program). */
static struct t_slurm *at_exit_cluster;

int t_run_cmd(const char *cmd, char **out, int *status)
{
	FILE *p;
	char *buf = NULL;
	size_t len = 0, cap = 0;
	int rc;

	*out = NULL;
	*status = -1;
	/* A child's exit must not kill the caller while it reads. */
	fflush(stdout);
	if (!(p = popen(cmd, "r")))
		return MER_EIO;
	for (;;) {
		if (cap - len < 4096) {
			char *nb = realloc(buf, cap + 8192);
			if (!nb) {
				free(buf);
				pclose(p);
				return MER_ENOMEM;
			}
			buf = nb;
			cap += 8192;
		}
		size_t n = fread(buf + len, 1, cap - len - 1, p);
		if (n == 0)
			break;
		len += n;
	}
	buf[len] = '\0';
	rc = pclose(p);
	*status = (rc != -1 && WIFEXITED(rc)) ? WEXITSTATUS(rc) : -1;
	*out = buf;
	return 0;
}

int t_env_value(const char *text, const char *key, char *out, size_t n)
{
	size_t klen = strlen(key);
	const char *line = text;

	/* Whole keys at line starts only: SLURM_CONF must not match the end
	 * of another key. */
	while (line && *line) {
		if (strncmp(line, key, klen) == 0 && line[klen] == '=' &&
		    line[klen + 1] == '\'') {
			const char *v = line + klen + 2;
			const char *q = strchr(v, '\'');
			if (!q || (size_t)(q - v) >= n)
				return MER_EPARSE;
			memcpy(out, v, (size_t)(q - v));
			out[q - v] = '\0';
			return 0;
		}
		line = strchr(line, '\n');
		if (line)
			line++;
	}
	return MER_ENOTFOUND;
}

void t_slurm_down_cmd(const struct t_slurm *s, char *cmd, size_t n)
{
	snprintf(cmd, n,
		 "'%s/deploy/slurm-down.sh' --state '%s' --purge >/dev/null",
		 s->top, s->state);
}

/*
 * A child in its own session that waits for the program to end. When
 * t_slurm_down ran it is told so and exits; when the program dies first,
 * the pipe reaches EOF and the child runs slurm-down.sh itself. Its own
 * session keeps it out of the signals a test runner's timeout sends to the
 * program's process group.
 */
static int start_watchdog(struct t_slurm *s)
{
	int fds[2];
	char cmd[1400];
	pid_t pid;

	t_slurm_down_cmd(s, cmd, sizeof(cmd));
	if (pipe2(fds, O_CLOEXEC) != 0)
		return MER_EIO;
	fflush(stdout);
	pid = fork();
	if (pid < 0) {
		close(fds[0]);
		close(fds[1]);
		return MER_EIO;
	}
	if (pid == 0) {
		char c;
		ssize_t r;

		close(fds[1]);
		setsid();
		do
			r = read(fds[0], &c, 1);
		while (r < 0 && errno == EINTR);
		if (r == 1)
			_exit(0);
		execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
		_exit(127);
	}
	close(fds[0]);
	s->watchdog_fd = fds[1];
	s->watchdog = pid;
	return 0;
}

static void stop_watchdog(struct t_slurm *s)
{
	if (s->watchdog_fd >= 0) {
		ssize_t r = write(s->watchdog_fd, "x", 1);
		(void)r;
		close(s->watchdog_fd);
		s->watchdog_fd = -1;
	}
	if (s->watchdog > 0) {
		while (waitpid(s->watchdog, NULL, 0) < 0 && errno == EINTR)
			;
		s->watchdog = 0;
	}
}

int t_slurm_down(struct t_slurm *s)
{
	char cmd[1400];
	int st = 0, rc;

	if (s->state[0]) {
		t_slurm_down_cmd(s, cmd, sizeof(cmd));
		fflush(stdout);
		rc = system(cmd);
		st = (rc != -1 && WIFEXITED(rc)) ? WEXITSTATUS(rc) : -1;
	}
	s->up = 0;
	stop_watchdog(s);
	return st;
}

/* The cluster must never outlive the program, even when the test's own
 * "down" was filtered out or returned early. */
static void down_at_exit(void)
{
	struct t_slurm *s = at_exit_cluster;

	if (!s)
		return;
	if (s->up && t_slurm_down(s) != 0)
		fprintf(stderr, "slurm-down.sh --state %s failed\n", s->state);
	stop_watchdog(s);
	free(s->up_log);
	s->up_log = NULL;
}

static int long_value(const char *text, const char *key, long *out)
{
	char num[32], *end;
	long v;
	int rv;

	if ((rv = t_env_value(text, key, num, sizeof(num))))
		return rv;
	errno = 0;
	v = strtol(num, &end, 10);
	if (errno || end == num || *end)
		return MER_EPARSE;
	*out = v;
	return 0;
}

/* Every setting slurm-up.sh prints; the first one missing is named. */
static int read_settings(struct t_slurm *s, const char *out)
{
	const struct {
		const char *key;
		char *dst;
		size_t n;
	} str[] = {
	    {"SLURM_CONF", s->conf, sizeof(s->conf)},
	    {"SLURMRESTD_SOCKET", s->sock, sizeof(s->sock)},
	    {"SLURM_PARTITION", s->partition, sizeof(s->partition)},
	    {"SLURM_NODE", s->node, sizeof(s->node)},
	    {"SLURM_GPU_MODEL", s->model, sizeof(s->model)},
	    {"SLURMRESTD_OPENAPI", s->versions, sizeof(s->versions)},
	    {"SLURM_JOB_DIR", s->job_dir, sizeof(s->job_dir)},
	};
	const struct {
		const char *key;
		long *dst;
	} num[] = {
	    {"SLURM_CPUS", &s->cpus},
	    {"SLURM_MEMORY_MB", &s->memory_mb},
	    {"SLURM_GPUS", &s->gpus},
	};
	const char *bad = NULL;

	for (size_t i = 0; !bad && i < sizeof(str) / sizeof(str[0]); i++)
		if (t_env_value(out, str[i].key, str[i].dst, str[i].n))
			bad = str[i].key;
	for (size_t i = 0; !bad && i < sizeof(num) / sizeof(num[0]); i++)
		if (long_value(out, num[i].key, num[i].dst))
			bad = num[i].key;
	if (!bad)
		return 0;
	free(s->up_log);
	s->up_log = malloc(128);
	if (s->up_log)
		snprintf(s->up_log, 128, "slurm-up.sh printed no valid %s",
			 bad);
	return MER_EPARSE;
}

int t_slurm_up(struct t_slurm *s, const char *tag, const char *args,
	       int *status)
{
	const char *top = getenv("MERIDIAN_TOP");
	char tmpl[256], cmd[2048], log[300], *out = NULL;
	int st = -1, rv;

	memset(s, 0, sizeof(*s));
	s->watchdog_fd = -1;
	if (status)
		*status = -1;
	snprintf(s->top, sizeof(s->top), "%s", top && *top ? top : ".");
	snprintf(cmd, sizeof(cmd), "%s/deploy/slurm-up.sh", s->top);
	if (access(cmd, X_OK) != 0)
		return MER_ENOTFOUND;
	if (!at_exit_cluster)
		atexit(down_at_exit);
	at_exit_cluster = s;
	/* Under /tmp, not $TMPDIR: slurmrestd runs as nobody and must be
	 * able to traverse every parent of the state dir. */
	snprintf(tmpl, sizeof(tmpl), "/tmp/meridian-%s.XXXXXX", tag);
	if (!mkdtemp(tmpl))
		return MER_EIO;
	snprintf(s->state, sizeof(s->state), "%s", tmpl);
	snprintf(log, sizeof(log), "%s.up.log", s->state);
	rv = snprintf(cmd, sizeof(cmd),
		      "'%s/deploy/slurm-up.sh' --state '%s' %s 2>'%s'", s->top,
		      s->state, args ? args : "", log);
	if (rv < 0 || (size_t)rv >= sizeof(cmd)) {
		rmdir(s->state);
		return MER_ETOOBIG;
	}
	/* From here on the at-exit handler cleans whatever was started. */
	s->up = 1;
	rv = t_run_cmd(cmd, &out, &st);
	if (status)
		*status = st;
	if (rv || st != 0) {
		t_read_file(log, &s->up_log, NULL);
		unlink(log);
		free(out);
		if (st == 3) {
			/* Nothing was started. */
			s->up = 0;
			rmdir(s->state);
			return MER_EUNSUPPORTED;
		}
		return rv ? rv : MER_EIO;
	}
	unlink(log);
	if (start_watchdog(s) != 0)
		printf(
		    "    warning: no watchdog; a killed program leaves Slurm "
		    "running\n");
	rv = read_settings(s, out);
	free(out);
	return rv;
}
