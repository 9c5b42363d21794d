/*
 * Meridian against Slurm on this machine, in the same run and at the same
 * concurrency: submissions per second through slurmrestd (POST job/submit
 * over its unix socket) and through sbatch to the one-node Slurm of
 * deploy/slurm-up.sh, against durable submissions per second to a real
 * broker (POST /v1/jobs answered 201, so stored in etcd), and the ratios.
 * Slurm jobs are submitted held, so no job runs and takes CPU from the
 * measurement; the broker's placer runs every 10 minutes, for the same
 * reason. Skips with a printed reason when Slurm cannot start here. The
 * cluster lives in a temp state dir and is always brought down (a watchdog
 * process does it if this program dies). Not a test of either system.
 *
 * MERIDIAN_BENCH_SECONDS sets each run's length (default 2); each figure is
 * the median of 3 runs, the systems taking turns.
 */
#include "tests/integration/broker_fixture.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sodium.h>
#include <unistd.h>

#include "common/log.h"

#define RUNS 3
#define MAXC 16

enum sys { SYS_REST, SYS_SBATCH, SYS_MERIDIAN, NSYS };

static struct {
	struct bfx F;
	char top[1024], state[256], sock[512], conf[512], partition[64];
	char job_dir[512], version[32], rest_url[128];
	int up, watchdog_fd;
	pid_t watchdog;
	double seconds;
	volatile int go, done;
} g = {.watchdog_fd = -1, .seconds = 2};

static const char *mjob =
    "{\"name\": \"bench\", \"priority\": \"batch\", \"stages\": ["
    "{\"name\": \"run\", \"kind\": \"generic\", \"resources\": "
    "{\"cpu\": 1, \"memory_mb\": 64}, \"duration_s\": 60, "
    "\"command\": [\"true\"]}]}";

static double median3(double *v)
{
	double a = v[0], b = v[1], c = v[2];
	if (a > b) {
		double t = a;
		a = b;
		b = t;
	}
	return c < a ? a : c > b ? b : c;
}

/* KEY='value' among slurm-up.sh's output lines. */
static int env_value(const char *text, const char *key, char *out, size_t n)
{
	char pat[80];
	const char *p, *e;

	snprintf(pat, sizeof(pat), "%s='", key);
	if (!(p = strstr(text, pat)))
		return MER_ENOTFOUND;
	p += strlen(pat);
	if (!(e = strchr(p, '\'')) || (size_t)(e - p) >= n)
		return MER_EPARSE;
	memcpy(out, p, (size_t)(e - p));
	out[e - p] = 0;
	return 0;
}

static void down_cmd(char *cmd, size_t n)
{
	snprintf(cmd, n,
		 "'%s/deploy/slurm-down.sh' --state '%s' --purge "
		 ">/dev/null 2>&1",
		 g.top, g.state);
}

/* A child that brings the cluster down when our end of the pipe closes
 * without a word: this process died before doing it itself. */
static void watchdog_start(void)
{
	char cmd[1400];
	int fds[2];
	pid_t pid;

	down_cmd(cmd, sizeof(cmd));
	if (pipe2(fds, O_CLOEXEC) != 0)
		return;
	fflush(stdout);
	if ((pid = fork()) < 0) {
		close(fds[0]);
		close(fds[1]);
		return;
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
	g.watchdog_fd = fds[1];
	g.watchdog = pid;
}

static void slurm_down(void)
{
	char cmd[1400];

	if (g.up) {
		down_cmd(cmd, sizeof(cmd));
		if (system(cmd) != 0)
			fprintf(stderr, "slurm_compare: slurm-down failed\n");
		g.up = 0;
	}
	if (g.watchdog_fd >= 0) {
		ssize_t r = write(g.watchdog_fd, "x", 1);
		(void)r;
		close(g.watchdog_fd);
		g.watchdog_fd = -1;
	}
	if (g.watchdog > 0) {
		waitpid(g.watchdog, NULL, 0);
		g.watchdog = 0;
	}
}

/* 0 up; 3 cannot run here (reason printed); other: failed. */
static int slurm_up(void)
{
	char tmpl[] = "/tmp/meridian-bench-slurm.XXXXXX";
	char cmd[2048], log[300], *out = NULL, *text = NULL;
	size_t len = 0, cap = 0;
	int st, rv;
	FILE *p;

	if (!mkdtemp(tmpl))
		return 1;
	snprintf(g.state, sizeof(g.state), "%s", tmpl);
	snprintf(log, sizeof(log), "%s.log", g.state);
	snprintf(cmd, sizeof(cmd),
		 "'%s/deploy/slurm-up.sh' --state '%s' --gpus 0 2>'%s'", g.top,
		 g.state, log);
	g.up = 1; /* from here on, down cleans what was started */
	atexit(slurm_down);
	if (!(p = popen(cmd, "r")))
		return 1;
	for (;;) {
		if (cap - len < 1024) {
			char *nb = realloc(out, cap + 8192);
			if (!nb)
				break;
			out = nb;
			cap += 8192;
		}
		size_t n = fread(out + len, 1, cap - len - 1, p);
		if (!n)
			break;
		len += n;
	}
	if (out)
		out[len] = 0;
	rv = pclose(p);
	st = WIFEXITED(rv) ? WEXITSTATUS(rv) : 128;
	if (st) {
		t_read_file(log, &text, NULL);
		printf("  slurm-up.sh exit %d: %.600s\n", st, text ? text : "");
		free(text);
		free(out);
		unlink(log);
		if (st == 3) {
			g.up = 0;
			rmdir(g.state);
		}
		return st == 3 ? 3 : 1;
	}
	unlink(log);
	watchdog_start();
	rv = env_value(out ? out : "", "SLURMRESTD_SOCKET", g.sock,
		       sizeof(g.sock)) ||
	     env_value(out, "SLURM_CONF", g.conf, sizeof(g.conf)) ||
	     env_value(out, "SLURM_PARTITION", g.partition,
		       sizeof(g.partition)) ||
	     env_value(out, "SLURM_JOB_DIR", g.job_dir, sizeof(g.job_dir)) ||
	     env_value(out, "SLURMRESTD_OPENAPI", cmd, sizeof(cmd));
	if (!rv) {
		/* newest first: "v0.0.38 v0.0.37 ..." */
		snprintf(g.version, sizeof(g.version), "%.*s",
			 (int)strcspn(cmd, " "), cmd);
		snprintf(g.rest_url, sizeof(g.rest_url),
			 "http://localhost/slurm/%s/job/submit", g.version);
	}
	free(out);
	return rv ? 1 : 0;
}

/* ---- submitters ---- */

static int rest_submit(CURL *h, const char *body)
{
	struct curl_slist *hd = NULL;
	struct bres r = {0};
	long status = 0;
	int ok;

	curl_easy_reset(h);
	curl_easy_setopt(h, CURLOPT_UNIX_SOCKET_PATH, g.sock);
	curl_easy_setopt(h, CURLOPT_URL, g.rest_url);
	curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, 30000L);
	curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
	curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, bres_body);
	curl_easy_setopt(h, CURLOPT_WRITEDATA, &r);
	hd = curl_slist_append(hd, "Content-Type: application/json");
	hd = curl_slist_append(hd, "Expect:");
	curl_easy_setopt(h, CURLOPT_HTTPHEADER, hd);
	ok = curl_easy_perform(h) == CURLE_OK;
	if (ok)
		curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
	curl_slist_free_all(hd);
	/* accepted only with a job id in the answer */
	ok = ok && status == 200 && r.body && strstr(r.body, "\"job_id\"");
	bres_clear(&r);
	return ok ? 0 : MER_EREMOTE;
}

static int sbatch_submit(void)
{
	char out[600], err[600];
	pid_t pid;
	int st;

	snprintf(out, sizeof(out), "--output=%s/bench-%%j.out", g.job_dir);
	snprintf(err, sizeof(err), "--chdir=%s", g.job_dir);
	char *argv[] = {"sbatch", "--hold", "--parsable", "-J",	  "bench",
			out,	  err,	    "--wrap",	  "true", NULL};
	if ((pid = fork()) < 0)
		return MER_EIO;
	if (pid == 0) {
		int fd = open("/dev/null", O_RDWR);
		if (fd >= 0) {
			dup2(fd, 0);
			dup2(fd, 1);
			dup2(fd, 2);
		}
		setenv("SLURM_CONF", g.conf, 1);
		execvp("sbatch", argv);
		_exit(127);
	}
	while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
		;
	return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : MER_EREMOTE;
}

struct worker {
	enum sys sys;
	unsigned long ok, failed;
};

static void *work(void *arg)
{
	struct worker *w = arg;
	CURL *h = w->sys != SYS_SBATCH ? curl_easy_init() : NULL;
	char body[2048];

	snprintf(body, sizeof(body),
		 "{\"job\": {\"name\": \"bench\", \"partition\": \"%s\", "
		 "\"hold\": true, \"current_working_directory\": \"%s\", "
		 "\"standard_output\": \"%s/bench-%%j.out\", "
		 "\"environment\": {\"PATH\": \"/usr/bin:/bin\"}}, "
		 "\"script\": \"#!/bin/sh\\ntrue\\n\"}",
		 g.partition, g.job_dir, g.job_dir);
	while (!g.go)
		usleep(100);
	while (!g.done) {
		int rv;
		if (w->sys == SYS_REST)
			rv = rest_submit(h, body);
		else if (w->sys == SYS_SBATCH)
			rv = sbatch_submit();
		else {
			struct bres r;
			rv = bfx_req_on(h, &g.F, "POST", "/v1/jobs", BFX_ACME,
					mjob, strlen(mjob), NULL, &r);
			if (!rv && r.status != 201)
				rv = MER_EREMOTE;
			bres_clear(&r);
		}
		if (rv)
			w->failed++;
		else
			w->ok++;
	}
	if (h)
		curl_easy_cleanup(h);
	return NULL;
}

static double run(enum sys s, int clients, unsigned long *failed)
{
	pthread_t t[MAXC];
	struct worker w[MAXC];
	unsigned long ok = 0;

	g.go = g.done = 0;
	for (int i = 0; i < clients; i++) {
		w[i] = (struct worker){.sys = s};
		pthread_create(&t[i], NULL, work, &w[i]);
	}
	usleep(100000);
	long long t0 = t_now_ms();
	g.go = 1;
	usleep((useconds_t)(g.seconds * 1e6));
	g.done = 1;
	for (int i = 0; i < clients; i++) {
		pthread_join(t[i], NULL);
		ok += w[i].ok;
		*failed += w[i].failed;
	}
	return (double)ok / ((double)(t_now_ms() - t0) / 1000.0);
}

int main(void)
{
	const char *s = getenv("MERIDIAN_BENCH_SECONDS");
	const char *top = getenv("MERIDIAN_TOP");
	int levels[] = {1, 8};
	int rv = 0, st;

	if (s && strtod(s, NULL) > 0)
		g.seconds = strtod(s, NULL);
	snprintf(g.top, sizeof(g.top), "%s", top && *top ? top : ".");
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (sodium_init() < 0)
		return 1;
	curl_global_init(CURL_GLOBAL_DEFAULT);
	mer_log_set_level(MER_LOG_WARN);
	printf("slurm_compare_bench: submissions per second, %.1f s runs, "
	       "median of %d\n",
	       g.seconds, RUNS);
	st = slurm_up();
	if (st == 3) {
		printf("  skipped: Slurm cannot start here (see above)\n");
		printf("BENCH {\"bench\":\"slurm_compare\",\"skipped\":true,"
		       "\"reason\":\"slurm-up.sh exit 3\"}\n");
		goto out;
	}
	if (st) {
		printf("  skipped: Slurm did not start (slurm-up.sh failed)\n");
		printf("BENCH {\"bench\":\"slurm_compare\",\"skipped\":true,"
		       "\"reason\":\"slurm-up.sh failed\"}\n");
		goto out;
	}
	if (bfx_start(&g.F, "\"http\": {\"workers\": 32, \"max_queue\": "
			    "4096}, \"placement\": {\"interval\": \"10m\"},")) {
		fprintf(stderr, "slurm_compare: broker did not start\n");
		rv = 1;
		goto out;
	}
	printf("  slurm: one node, slurmrestd %s on a unix socket; meridian: "
	       "one broker, one etcd member\n",
	       g.version);
	for (size_t l = 0; l < sizeof(levels) / sizeof(levels[0]); l++) {
		int c = levels[l];
		double rate[NSYS][RUNS], med[NSYS];
		unsigned long failed[NSYS] = {0};

		for (int r = 0; r < RUNS; r++)
			for (int k = 0; k < NSYS; k++)
				rate[k][r] = run((enum sys)k, c, &failed[k]);
		for (int k = 0; k < NSYS; k++)
			med[k] = median3(rate[k]);
		double r_rest =
		    med[SYS_REST] > 0 ? med[SYS_MERIDIAN] / med[SYS_REST] : 0;
		double r_sb = med[SYS_SBATCH] > 0
				  ? med[SYS_MERIDIAN] / med[SYS_SBATCH]
				  : 0;
		printf("  %2d clients: meridian %7.0f jobs/s (201), slurmrestd "
		       "%7.0f/s, sbatch %6.0f/s; meridian/slurmrestd %.2f, "
		       "meridian/sbatch %.2f%s\n",
		       c, med[SYS_MERIDIAN], med[SYS_REST], med[SYS_SBATCH],
		       r_rest, r_sb,
		       failed[0] || failed[1] || failed[2]
			   ? " (some submissions failed)"
			   : "");
		printf("BENCH {\"bench\":\"slurm_compare\",\"clients\":%d,"
		       "\"meridian_jobs_per_sec\":%.0f,"
		       "\"slurmrestd_jobs_per_sec\":%.0f,"
		       "\"sbatch_jobs_per_sec\":%.0f,"
		       "\"ratio_vs_slurmrestd\":%.3f,"
		       "\"ratio_vs_sbatch\":%.3f,\"failed\":{\"meridian\":%lu,"
		       "\"slurmrestd\":%lu,\"sbatch\":%lu},\"runs\":%d,"
		       "\"seconds\":%.1f}\n",
		       c, med[SYS_MERIDIAN], med[SYS_REST], med[SYS_SBATCH],
		       r_rest, r_sb, failed[SYS_MERIDIAN], failed[SYS_REST],
		       failed[SYS_SBATCH], RUNS, g.seconds);
		if (failed[SYS_MERIDIAN] || !med[SYS_REST] || !med[SYS_SBATCH])
			rv = 1;
	}
out:
	if (g.F.etcd)
		bfx_free(&g.F);
	slurm_down();
	curl_global_cleanup();
	return rv;
}
