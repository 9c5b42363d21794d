/*
 * Durable submissions per second: POST /v1/jobs answered 201 (so stored in
 * etcd) by a real broker, at 1 and 64 concurrent clients, against raw etcd
 * puts of a job-sized value through the same v3 gateway at the same
 * concurrency in the same run, and their ratio. The broker group-commits
 * concurrent jobs into one txn, which is how it can keep up with raw puts.
 * Also the broker's RSS afterwards. Prints human lines and BENCH {json}.
 *
 * MERIDIAN_BENCH_SECONDS sets each phase's length (default 3).
 * MERIDIAN_BENCH_FULL=1 also loads 1,000 site reports and 100,000 jobs and
 * reports the broker's RSS then (a few minutes).
 */
#include "tests/integration/broker_fixture.h"

#include <pthread.h>
#include <sodium.h>
#include <unistd.h>

#include "common/err.h"
#include "common/log.h"

static struct bfx F;
static struct mer_etcd *raw;
static volatile int go, done_flag;
static double seconds = 3;

static const char *job =
    "{\"name\": \"bench\", \"priority\": \"batch\", \"stages\": ["
    "{\"name\": \"prep\", \"kind\": \"data-prep\", \"resources\": "
    "{\"cpu\": 1, \"memory_mb\": 64}, \"duration_s\": 60},"
    "{\"name\": \"train\", \"kind\": \"training\", \"after\": [\"prep\"], "
    "\"resources\": {\"cpu\": 1, \"memory_mb\": 64}, \"duration_s\": 60}]}";

struct worker {
	int id;
	int mode; /* 0 broker, 1 raw etcd */
	unsigned long ok, failed;
	size_t value_len;
};

static void *work(void *arg)
{
	struct worker *w = arg;
	CURL *h = w->mode == 0 ? curl_easy_init() : NULL;
	char *value = malloc(w->value_len + 1);
	char key[96];
	unsigned long n = 0;

	if (value) {
		memset(value, 'v', w->value_len);
		value[w->value_len] = 0;
	}
	while (!go)
		usleep(100);
	while (!done_flag && value) {
		if (w->mode == 0) {
			struct bres r;
			if (bfx_req_on(h, &F, "POST", "/v1/jobs", BFX_ACME, job,
				       strlen(job), NULL, &r) == 0 &&
			    r.status == 201)
				w->ok++;
			else
				w->failed++;
			bres_clear(&r);
		} else {
			snprintf(key, sizeof(key), "/bench/raw/%d/%lu", w->id,
				 n++);
			if (mer_etcd_put(raw, key, strlen(key), value,
					 w->value_len, 0, NULL) == 0)
				w->ok++;
			else
				w->failed++;
		}
	}
	free(value);
	if (h)
		curl_easy_cleanup(h);
	return NULL;
}

static double run(int mode, int clients, size_t value_len,
		  unsigned long *failed)
{
	pthread_t t[64];
	struct worker w[64];
	unsigned long ok = 0;

	go = done_flag = 0;
	*failed = 0;
	for (int i = 0; i < clients; i++) {
		w[i] = (struct worker){
		    .id = i, .mode = mode, .value_len = value_len};
		pthread_create(&t[i], NULL, work, &w[i]);
	}
	usleep(200000);
	long long t0 = t_now_ms();
	go = 1;
	usleep((useconds_t)(seconds * 1e6));
	done_flag = 1;
	for (int i = 0; i < clients; i++) {
		pthread_join(t[i], NULL);
		ok += w[i].ok;
		*failed += w[i].failed;
	}
	double el = (double)(t_now_ms() - t0) / 1000.0;
	return (double)ok / el;
}

/* sum and count of one of the broker's histograms, from /metrics. */
struct hist {
	double sum, count;
};

static void scrape(struct hist *http, struct hist *etcd)
{
	static const char *names[] = {
	    "\nmeridian_http_request_duration_seconds_",
	    "\nmeridian_etcd_request_duration_seconds_"};
	struct hist *out[] = {http, etcd};
	struct bres r;
	char key[96];

	bfx_req(&F, "GET", "/metrics", NULL, NULL, NULL, &r);
	for (int i = 0; i < 2; i++) {
		const char *p;
		*out[i] = (struct hist){0};
		snprintf(key, sizeof(key), "%ssum ", names[i]);
		if (r.body && (p = strstr(r.body, key)))
			out[i]->sum = strtod(p + strlen(key), NULL);
		snprintf(key, sizeof(key), "%scount ", names[i]);
		if (r.body && (p = strstr(r.body, key)))
			out[i]->count = strtod(p + strlen(key), NULL);
	}
	bres_clear(&r);
}

static double mean_ms(const struct hist *a, const struct hist *b)
{
	double n = b->count - a->count;
	return n > 0 ? (b->sum - a->sum) / n * 1e3 : 0;
}

static long rss_kb(pid_t pid)
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

struct filler {
	int id, per;
};

static void *fill(void *arg)
{
	struct filler *f = arg;
	CURL *h = curl_easy_init();

	for (int i = 0; i < f->per; i++) {
		struct bres r;
		bfx_req_on(h, &F, "POST", "/v1/jobs", BFX_ACME, job,
			   strlen(job), NULL, &r);
		bres_clear(&r);
	}
	curl_easy_cleanup(h);
	return NULL;
}

/* 1,000 sites reporting and 100,000 jobs stored: the broker's RSS. */
static void full_scale(void)
{
	static const char *regions[] = {"cn-north-1", "cn-east-1", "eu-west-1",
					"us-east-1", "us-central-1"};
	char key[96], val[1024];
	pthread_t t[64];
	struct filler fl[64];

	for (int i = 0; i < 1000; i++) {
		snprintf(key, sizeof(key), "/meridian/site-reports/s%04d", i);
		snprintf(val, sizeof(val),
			 "{\"name\": \"s%04d\", \"region\": \"%s\", "
			 "\"scheduler\": \"sim\", \"pools\": [{\"name\": "
			 "\"gpu\", \"resources\": {\"cpu\": {\"total\": 512, "
			 "\"free\": 256}, \"memory_mb\": {\"total\": 4194304, "
			 "\"free\": 2097152}, \"gpu:a100\": {\"total\": 64, "
			 "\"free\": 16}}}], \"prices\": {\"gpu_hour\": "
			 "{\"a100\": %.2f}, \"core_hour\": 0.02}}",
			 i, regions[i % 5], 1.5 + (i % 17) * 0.05);
		mer_etcd_put(raw, key, strlen(key), val, strlen(val), 0, NULL);
	}
	long long t0 = t_now_ms();
	for (int i = 0; i < 64; i++) {
		fl[i] = (struct filler){.id = i, .per = 100000 / 64 + 1};
		pthread_create(&t[i], NULL, fill, &fl[i]);
	}
	for (int i = 0; i < 64; i++)
		pthread_join(t[i], NULL);
	double el = (double)(t_now_ms() - t0) / 1000.0;
	sleep(5); /* let placement rounds run over the new federation */
	long kb = rss_kb(t_proc_pid(F.proc));
	printf("  full scale: 1000 sites, %d jobs submitted in %.0f s, "
	       "broker RSS %ld KiB\n",
	       64 * (100000 / 64 + 1), el, kb);
	printf("BENCH {\"bench\":\"broker_rss\",\"sites\":1000,"
	       "\"jobs\":%d,\"broker_rss_kb\":%ld}\n",
	       64 * (100000 / 64 + 1), kb);
}

int main(void)
{
	const char *s = getenv("MERIDIAN_BENCH_SECONDS");
	int levels[] = {1, 64};
	size_t value_len = 0;

	if (s && strtod(s, NULL) > 0)
		seconds = strtod(s, NULL);
	if (sodium_init() < 0)
		return 1;
	curl_global_init(CURL_GLOBAL_DEFAULT);
	mer_log_set_level(MER_LOG_WARN);
	/* Enough workers that 64 clients are all in the store at once,
	 * and a slow placer so placement does not compete for etcd. */
	if (bfx_start(&F, "\"http\": {\"workers\": 96, \"max_queue\": 4096},"
			  " \"placement\": {\"interval\": \"10m\"},") != 0) {
		fprintf(stderr, "submit_bench: broker did not start\n");
		bfx_free(&F);
		return 1;
	}
	struct mer_etcd_opts o = {.endpoints = t_etcd_url(F.etcd),
				  .pool_size = 64};
	if (mer_etcd_open(&o, &raw) != 0) {
		bfx_free(&F);
		return 1;
	}
	{
		/* A raw put as big as the record the broker writes. */
		char key[] = "/meridian/jobs/";
		struct bres r;
		struct mer_etcd_range rg = {0};
		bfx_req(&F, "POST", "/v1/jobs", BFX_ACME, job, NULL, &r);
		bres_clear(&r);
		/* The record as submitted (its first version): the placer
		 * may already have rewritten it with its explanation. */
		if (mer_etcd_range_prefix(raw, key, strlen(key), NULL, 0, 1, 0,
					  1, &rg, NULL) == 0 &&
		    rg.n == 1) {
			struct mer_etcd_range first = {0};
			if (mer_etcd_range_prefix(raw, key, strlen(key), NULL,
						  0, 1,
						  rg.kvs[0].create_revision, 0,
						  &first, NULL) == 0 &&
			    first.n == 1)
				value_len = first.kvs[0].value_len;
			mer_etcd_range_clear(&first);
		}
		mer_etcd_range_clear(&rg);
		if (!value_len)
			value_len = 800;
	}
	printf("submit_bench: %.1f s per phase, job record %zu bytes\n",
	       seconds, value_len);
	for (size_t i = 0; i < sizeof(levels) / sizeof(levels[0]); i++) {
		int c = levels[i];
		unsigned long fb = 0, fr = 0;
		struct hist h0, e0, h1, e1;
		double raw_rate = run(1, c, value_len, &fr);
		scrape(&h0, &e0);
		double broker_rate = run(0, c, value_len, &fb);
		scrape(&h1, &e1);
		double ratio = raw_rate > 0 ? broker_rate / raw_rate : 0;
		/* Where a submission's time goes: client round trip (from the
		 * rate), inside the broker's HTTP server, and per etcd
		 * request (mostly the group-commit txns). */
		printf("  %2d clients: client round trip %.2f ms, in the "
		       "broker %.2f ms, per etcd request %.2f ms (%.0f "
		       "requests)\n",
		       c, broker_rate > 0 ? c / broker_rate * 1e3 : 0,
		       mean_ms(&h0, &h1), mean_ms(&e0, &e1),
		       e1.count - e0.count);
		printf("  %2d clients: broker %8.0f jobs/s (201), raw etcd "
		       "puts %8.0f/s, ratio %.2f%s\n",
		       c, broker_rate, raw_rate, ratio,
		       fb || fr ? " (some requests failed)" : "");
		printf("BENCH {\"bench\":\"submit\",\"clients\":%d,"
		       "\"broker_jobs_per_sec\":%.0f,"
		       "\"raw_etcd_puts_per_sec\":%.0f,\"ratio\":%.3f,"
		       "\"broker_failed\":%lu,\"raw_failed\":%lu,"
		       "\"seconds\":%.1f}\n",
		       c, broker_rate, raw_rate, ratio, fb, fr, seconds);
	}
	{
		struct bres r;
		bfx_req(&F, "GET", "/metrics", NULL, NULL, NULL, &r);
		const char *p =
		    r.body ? strstr(r.body, "\nmeridian_store_txns_total ")
			   : NULL;
		long txns = p ? strtol(p + 27, NULL, 10) : -1;
		p = r.body ? strstr(r.body, "\nmeridian_jobs_submitted_total ")
			   : NULL;
		long jobs = p ? strtol(p + 31, NULL, 10) : -1;
		bres_clear(&r);
		long kb = rss_kb(t_proc_pid(F.proc));
		printf("  broker: %ld jobs in %ld txns (%.1f per txn), "
		       "RSS %ld KiB\n",
		       jobs, txns, txns > 0 ? (double)jobs / (double)txns : 0,
		       kb);
		printf("BENCH {\"bench\":\"submit_batching\",\"jobs\":%ld,"
		       "\"txns\":%ld,\"broker_rss_kb\":%ld}\n",
		       jobs, txns, kb);
	}
	if (getenv("MERIDIAN_BENCH_FULL"))
		full_scale();
	mer_etcd_close(raw);
	bfx_free(&F);
	return 0;
}
