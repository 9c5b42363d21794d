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
#include "tests/lib/slurm_cluster.h"

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
	struct t_slurm s;
	char version[32], rest_url[128];
	double seconds;
	volatile int go, done;
} g = {.seconds = 2};

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

static void slurm_down(void)
{
	if (g.s.up && t_slurm_down(&g.s) != 0)
		fprintf(stderr, "slurm_compare: slurm-down failed\n");
}

/* 0 up; 3 cannot run here (reason printed); other: failed. */
static int slurm_up(void)
{
	int st, rv = t_slurm_up(&g.s, "bench-slurm", "--gpus 0", &st);

	if (rv) {
		printf("  slurm-up.sh exit %d: %.600s\n", st,
		       g.s.up_log ? g.s.up_log : "");
		return rv == MER_EUNSUPPORTED ? 3 : 1;
	}
	/* newest first: "v0.0.38 v0.0.37 ..." */
	snprintf(g.version, sizeof(g.version), "%.*s",
		 (int)strcspn(g.s.versions, " "), g.s.versions);
	snprintf(g.rest_url, sizeof(g.rest_url),
		 "http://localhost/slurm/%s/job/submit", g.version);
	return 0;
}

/* ---- submitters ---- */

static int rest_submit(CURL *h, const char *body)
{
	struct curl_slist *hd = NULL;
	struct bres r = {0};
	long status = 0;
	int ok;

	curl_easy_reset(h);
	curl_easy_setopt(h, CURLOPT_UNIX_SOCKET_PATH, g.s.sock);
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

	snprintf(out, sizeof(out), "--output=%s/bench-%%j.out", g.s.job_dir);
	snprintf(err, sizeof(err), "--chdir=%s", g.s.job_dir);
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
		setenv("SLURM_CONF", g.s.conf, 1);
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
		 g.s.partition, g.s.job_dir, g.s.job_dir);
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
	int levels[] = {1, 8};
	int rv = 0, st;

	if (s && strtod(s, NULL) > 0)
		g.seconds = strtod(s, NULL);
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
