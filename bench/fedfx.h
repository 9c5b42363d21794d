/*
 * Shared by bench/fed_bench.c and bench/dispatch_bench.c: a real etcd and
 * broker process (tests/integration/broker_fixture.h) with its agent link,
 * and many sim agents in this process, each joined with its own token from
 * POST /v1/tokens. Most agents run the site agent's own loop
 * (site-agent/loop.c); a few "probe" agents run an instrumented copy of it
 * that times report round trips and the arrival of launch commands. Not a
 * test fixture: it prints progress and keeps going when a few agents fail.
 * Header-only: each benchmark includes it once.
 */
#ifndef MERIDIAN_BENCH_FEDFX_H
#define MERIDIAN_BENCH_FEDFX_H

#include "tests/integration/broker_fixture.h"

#include <pthread.h>
#include <sodium.h>
#include <stdatomic.h>
#include <time.h>
#include <unistd.h>

#include "common/keys.h"
#include "common/link.h"
#include "common/log.h"
#include "site-agent/config.h"
#include "site-agent/join.h"
#include "site-agent/loop.h"
#include "site-agent/runner.h"

#define FED_MAX_AGENTS 1100
#define FED_MAX_SAMPLES 200000
#define FED_MAX_LAUNCHES 4096

struct fed_agent {
	char name[32];
	struct mer_keypair kp;
	struct mer_agent_cfg cfg;
	int have_cfg, joined, probe;
	pthread_t thr;
	int started, rv;
};

/* One launch command seen by a probe agent. */
struct fed_launch {
	char stage_id[200];
	long long at_us;
};

static struct fed {
	struct bfx F;
	char sim[600];
	char fp[MER_KEY_FP_SIZE];
	struct fed_agent *a;
	int n; /* agents made so far */
	atomic_int stop;
	pthread_mutex_t lock;
	/* report round trips of the probes, in microseconds, since reset */
	double *rtt;
	size_t nrtt;
	unsigned long report_failed;
	struct fed_launch launches[FED_MAX_LAUNCHES];
	size_t nlaunch;
	/* finished events a probe sent: stage id and when the send began */
	struct fed_launch finishes[FED_MAX_LAUNCHES];
	size_t nfinish;
} G = {.lock = PTHREAD_MUTEX_INITIALIZER};

static const char *fed_regions[] = {"eu-west-1", "us-east-1", "cn-east-1",
				    "cn-north-1"};

static inline long long fed_now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static inline int fed_cmp_d(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

/* The p-th percentile (0..100) of v (sorted here), nearest rank. */
static inline double fed_pct(double *v, size_t n, double p)
{
	size_t k;

	if (!n)
		return 0;
	qsort(v, n, sizeof(*v), fed_cmp_d);
	k = (size_t)(p / 100.0 * (double)n + 0.999999);
	if (k < 1)
		k = 1;
	if (k > n)
		k = n;
	return v[k - 1];
}

static inline double fed_median(double *v, size_t n)
{
	if (!n)
		return 0;
	qsort(v, n, sizeof(*v), fed_cmp_d);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* utime + stime of a process in clock ticks, and its RSS in KiB. */
static inline int fed_proc_cpu(pid_t pid, unsigned long long *ticks)
{
	char path[64], *text = NULL, *p;
	unsigned long long ut = 0, st = 0;
	int rv = MER_EIO;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	if (t_read_file(path, &text, NULL) != 0)
		return MER_EIO;
	/* the command name may hold spaces: fields count from its ')' */
	p = strrchr(text, ')');
	if (p && sscanf(p + 2,
			"%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu "
			"%llu",
			&ut, &st) == 2) {
		*ticks = ut + st;
		rv = 0;
	}
	free(text);
	return rv;
}

static inline long fed_rss_kb(pid_t pid)
{
	char path[64], *text = NULL;
	long kb = -1;

	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	if (t_read_file(path, &text, NULL) == 0) {
		char *p = strstr(text, "VmRSS:");
		if (p)
			kb = strtol(p + 6, NULL, 10);
	}
	free(text);
	return kb;
}

/* Starts etcd and the broker with its link. extra: more config members. */
static inline int fed_start(const char *extra)
{
	char cfg[1024];

	G.a = calloc(FED_MAX_AGENTS, sizeof(*G.a));
	G.rtt = calloc(FED_MAX_SAMPLES, sizeof(*G.rtt));
	if (!G.a || !G.rtt)
		return MER_ENOMEM;
	snprintf(cfg, sizeof(cfg),
		 "\"http\": {\"workers\": 32, \"max_queue\": 4096},"
		 " \"sites\": {\"report_interval\": \"1s\"}, %s",
		 extra ? extra : "");
	int rv = bfx_start_opts(&G.F, cfg, 1);
	if (rv)
		return rv;
	/* Every agent's sim cluster is described by the same file (the sim
	 * adapter keeps one world per site name). */
	snprintf(G.sim, sizeof(G.sim), "%s/site.sim.json", G.F.dir);
	return bfx_write(G.sim,
			 "{\"version\": \"sim-bench\", \"pools\": [{\"name\": "
			 "\"gpu\", \"est_wait_s\": 5, \"nodes\": [{\"count\": "
			 "4, \"cpus\": 64, \"memory_mb\": 512000, \"gpus\": "
			 "{\"a100\": 8}}]}]}");
}

/* One site: token from the API, join with a new key, agent config. */
static inline int fed_join_one(struct fed_agent *ag, int i, CURL *h)
{
	char body[256], token[160], cfg[2048], err[512], keyp[700];
	struct bres r;
	int rv;

	snprintf(ag->name, sizeof(ag->name), "%s-%04d",
		 ag->probe ? "probe" : "sim", i);
	snprintf(body, sizeof(body),
		 "{\"site\": \"%s\", \"region\": \"%s\", \"ttl\": \"1h\"}",
		 ag->name, fed_regions[i % 4]);
	rv = bfx_req_on(h, &G.F, "POST", "/v1/tokens", BFX_ADMIN, body,
			strlen(body), NULL, &r);
	if (rv || r.status != 201) {
		bres_clear(&r);
		return rv ? rv : MER_EREMOTE;
	}
	snprintf(token, sizeof(token), "%s",
		 bres_str(&r, "token") ? bres_str(&r, "token") : "");
	if (!G.fp[0]) {
		pthread_mutex_lock(&G.lock);
		snprintf(G.fp, sizeof(G.fp), "%s",
			 bres_str(&r, "broker_key") ? bres_str(&r, "broker_key")
						    : "");
		pthread_mutex_unlock(&G.lock);
	}
	bres_clear(&r);
	snprintf(keyp, sizeof(keyp), "%s/%s.key", G.F.dir, ag->name);
	struct mer_agent_join_opts jo = {.broker_url = G.F.link,
					 .token = token,
					 .broker_fp = G.fp,
					 .key_path = keyp};
	struct mer_agent_join_result jr;
	rv = mer_agent_join(&jo, &jr, err, sizeof(err));
	sodium_memzero(token, sizeof(token));
	if (rv) {
		fprintf(stderr, "%s: %s\n", ag->name, err);
		return rv;
	}
	if ((rv = mer_keypair_load(keyp, &ag->kp, err, sizeof(err))))
		return rv;
	ag->joined = 1;
	snprintf(cfg, sizeof(cfg),
		 "{\"site\": {\"name\": \"%s\", \"region\": \"%s\"},"
		 " \"scheduler\": {\"kind\": \"sim\", \"sim_file\": \"%s\","
		 " \"time_scale\": 100},"
		 " \"prices\": {\"gpu_hour\": {\"a100\": %d.5}, "
		 "\"core_hour\": 0.01},"
		 " \"agent\": {\"state_file\": \"%s/%s.state\","
		 " \"broker\": \"%s\", \"broker_key\": \"%s\","
		 " \"report_interval\": \"1s\", \"poll_interval\": "
		 "\"1s\"}}",
		 ag->name, fed_regions[i % 4], G.sim, 1 + i % 4, G.F.dir,
		 ag->name, G.F.link, G.fp);
	if ((rv = mer_agent_cfg_load_string(ag->name, cfg, &ag->cfg, err,
					    sizeof(err)))) {
		fprintf(stderr, "%s: %s\n", ag->name, err);
		return rv;
	}
	ag->have_cfg = 1;
	return 0;
}

struct fed_joiner {
	int from, to, step;
	int failed;
};

static inline void *fed_joiner_main(void *arg)
{
	struct fed_joiner *j = arg;
	CURL *h = curl_easy_init();

	for (int i = j->from; i < j->to; i += j->step)
		if (fed_join_one(&G.a[i], i, h))
			j->failed++;
	curl_easy_cleanup(h);
	return NULL;
}

/* ---- the agents' threads ---- */

static inline void *fed_plain_main(void *arg)
{
	struct fed_agent *ag = arg;
	struct mer_agent_loop_opts o = {.cfg = &ag->cfg,
					.key = &ag->kp,
					.stop = &G.stop,
					.poll_wait_ms = 1000};
	char err[512] = "";

	ag->rv = mer_agent_loop_run(&o, err, sizeof(err));
	if (ag->rv)
		fprintf(stderr, "%s: %s\n", ag->name, err);
	return NULL;
}

static inline void fed_note(struct fed_launch *arr, size_t *n, const char *id,
			    long long at)
{
	pthread_mutex_lock(&G.lock);
	if (*n < FED_MAX_LAUNCHES) {
		snprintf(arr[*n].stage_id, sizeof(arr[*n].stage_id), "%s", id);
		arr[*n].at_us = at;
		(*n)++;
	}
	pthread_mutex_unlock(&G.lock);
}

/*
 * The probe: the same steps as mer_agent_loop_run (summary every report
 * interval, events and results sent synchronously and acknowledged, a
 * long-poll for commands run through the runner), but the summary is sent
 * with a synchronous report so its round trip can be timed, and launch
 * commands and finished events are noted with the time they arrived or
 * left.
 */
static inline void *fed_probe_main(void *arg)
{
	struct fed_agent *ag = arg;
	struct mer_agent *a = NULL;
	struct mer_link_client *c = NULL;
	struct mer_link_client_opts lo = {
	    .url = G.F.link, .broker_fp = G.fp, .key = &ag->kp};
	json_t *results = json_array();
	long long next_report = 0;
	unsigned long seq = 0;
	char err[512] = "";

	if (!results || mer_agent_open(&ag->cfg, &a, err, sizeof(err)) ||
	    mer_link_client_open(&lo, &c)) {
		fprintf(stderr, "%s: cannot start: %s\n", ag->name, err);
		ag->rv = MER_EIO;
		goto out;
	}
	while (!atomic_load(&G.stop)) {
		long long now = fed_now_us();
		json_t *sum = NULL, *cmds = NULL, *ev, *e;
		size_t i;
		char id[64];

		if (now >= next_report) {
			mer_agent_probe(a);
			next_report = now + ag->cfg.report_interval_ms * 1000;
			if (mer_agent_summary(a, &sum) == 0) {
				snprintf(id, sizeof(id), "sum-%lu", ++seq);
				json_object_set_new(sum, "type",
						    json_string("summary"));
				json_object_set_new(sum, "id", json_string(id));
				long long t0 = fed_now_us();
				int rv = mer_link_client_report(c, sum, 0);
				long long t1 = fed_now_us();
				pthread_mutex_lock(&G.lock);
				if (rv)
					G.report_failed++;
				else if (G.nrtt < FED_MAX_SAMPLES)
					G.rtt[G.nrtt++] = (double)(t1 - t0);
				pthread_mutex_unlock(&G.lock);
				json_decref(sum);
			}
		}
		mer_agent_tick(a);
		ev = mer_agent_events(a);
		if (json_array_size(ev) || json_array_size(results)) {
			long long t0 = fed_now_us();
			snprintf(id, sizeof(id), "ev-%lu", ++seq);
			json_t *rep = json_pack("{s:s, s:s, s:O, s:O}", "type",
						"events", "id", id, "events",
						ev, "results", results);
			if (rep && mer_link_client_report(c, rep, 0) == 0) {
				json_t *ids = json_array();
				json_array_foreach (ev, i, e) {
					const char *k = json_string_value(
					    json_object_get(e, "event"));
					if (k && !strcmp(k, "finished"))
						fed_note(G.finishes, &G.nfinish,
							 json_string_value(
							     json_object_get(
								 e, "stage")),
							 t0);
					json_array_append(
					    ids, json_object_get(e, "id"));
				}
				mer_agent_ack_events(a, ids);
				json_decref(ids);
				json_array_clear(results);
			}
			json_decref(rep);
		}
		json_decref(ev);
		/* Wake for the next summary, and often enough to see a
		 * stage end (runs are short at time_scale 100). */
		long long left = (next_report - fed_now_us()) / 1000;
		int wait = left < 20 ? 20 : left > 200 ? 200 : (int)left;
		if (mer_link_client_poll(c, wait, &cmds)) {
			json_decref(cmds);
			t_sleep_ms(50);
			continue;
		}
		long long at = fed_now_us();
		json_array_foreach (cmds, i, e) {
			json_t *reply = NULL;
			const char *type =
			    json_string_value(json_object_get(e, "type"));
			if (type && !strcmp(type, "launch"))
				fed_note(
				    G.launches, &G.nlaunch,
				    json_string_value(json_object_get(
					json_object_get(e, "stage"), "id")),
				    at);
			mer_agent_command(a, e, &reply);
			if (reply)
				json_array_append_new(results, reply);
		}
		json_decref(cmds);
	}
	mer_link_client_flush(c, 2000);
out:
	json_decref(results);
	mer_link_client_close(c);
	mer_agent_close(a);
	return NULL;
}

/*
 * Joins agents until there are n (the first nprobe of all are probes) and
 * starts their threads. Returns how many run.
 */
static inline int fed_grow(int n, int nprobe)
{
	struct fed_joiner j[16];
	pthread_t t[16];
	int from = G.n, running = 0, failed = 0;
	long long t0 = t_now_ms();

	if (n > FED_MAX_AGENTS)
		n = FED_MAX_AGENTS;
	for (int i = from; i < n; i++)
		G.a[i].probe = i < nprobe;
	for (int k = 0; k < 16; k++) {
		j[k] =
		    (struct fed_joiner){.from = from + k, .to = n, .step = 16};
		pthread_create(&t[k], NULL, fed_joiner_main, &j[k]);
	}
	for (int k = 0; k < 16; k++) {
		pthread_join(t[k], NULL);
		failed += j[k].failed;
	}
	printf("  joined %d sites in %.1f s (%d failed)\n", n - from - failed,
	       (double)(t_now_ms() - t0) / 1000.0, failed);
	for (int i = from; i < n; i++) {
		struct fed_agent *ag = &G.a[i];
		if (!ag->have_cfg)
			continue;
		if (pthread_create(&ag->thr, NULL,
				   ag->probe ? fed_probe_main : fed_plain_main,
				   ag) == 0)
			ag->started = 1;
	}
	G.n = n;
	for (int i = 0; i < n; i++)
		running += G.a[i].started;
	return running;
}

/* Agent sites whose last report is at most 3 s old (GET /v1/sites). */
static inline int fed_sites_reporting(void)
{
	struct bres r;
	size_t i;
	json_t *s, *list;
	int n = 0;

	if (bfx_req(&G.F, "GET", "/v1/sites", BFX_ADMIN, NULL, NULL, &r))
		return -1;
	list =
	    json_is_array(r.json) ? r.json : json_object_get(r.json, "sites");
	json_array_foreach (list, i, s) {
		const char *name =
		    json_string_value(json_object_get(s, "name"));
		if (name &&
		    (!strncmp(name, "sim-", 4) ||
		     !strncmp(name, "probe-", 6)) &&
		    json_is_integer(json_object_get(s, "last_report_age_s")) &&
		    json_integer_value(
			json_object_get(s, "last_report_age_s")) <= 3)
			n++;
	}
	bres_clear(&r);
	return n;
}

/* Waits until want sites have reported; returns how many did. */
static inline int fed_wait_reporting(int want, int timeout_ms)
{
	long long end = t_now_ms() + timeout_ms;
	int n = 0;

	while (t_now_ms() < end) {
		n = fed_sites_reporting();
		if (n >= want)
			break;
		t_sleep_ms(500);
	}
	return n;
}

static inline void fed_reset_samples(void)
{
	pthread_mutex_lock(&G.lock);
	G.nrtt = 0;
	G.report_failed = 0;
	pthread_mutex_unlock(&G.lock);
}

/* Stops every agent thread, the broker and etcd; removes the temp dir. */
static inline void fed_stop(void)
{
	atomic_store(&G.stop, 1);
	for (int i = 0; i < G.n; i++) {
		struct fed_agent *ag = &G.a[i];
		if (ag->started)
			pthread_join(ag->thr, NULL);
		if (ag->have_cfg)
			mer_agent_cfg_free(&ag->cfg);
		mer_keypair_wipe(&ag->kp);
	}
	if (G.F.etcd)
		bfx_free(&G.F);
	free(G.a);
	free(G.rtt);
	G.a = NULL;
	G.rtt = NULL;
	G.n = 0;
}

#endif
