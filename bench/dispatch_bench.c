/*
 * Dispatch latency with 1,000 agents connected (sim agents in this process,
 * each joined with its own token and reporting every second to one real
 * broker process): from a stage becoming runnable to its agent receiving
 * the launch and starting it, p50/p99. Two cases, both timed on one
 * monotonic clock in this process:
 *   new job    a job's first stage: from the 201 of POST /v1/jobs (the job
 *              is in etcd) to the launch at the agent; includes placement;
 *   dependency the next stage of a job: from the agent sending the finished
 *              event of the stage before it to the launch of this one.
 * Jobs go one at a time to ten probe sites in turn. Prints human lines and
 * BENCH {json}. MERIDIAN_BENCH_JOBS sets the number of jobs (default 20).
 */
#include "bench/fedfx.h"

#include <sodium.h>

#define NAGENTS 1000
#define NPROBES 10

/* When the probes saw stage_id (a launch or a finished event); 0 if not. */
static long long seen(struct fed_launch *arr, const size_t *n,
		      const char *stage_id)
{
	long long at = 0;

	pthread_mutex_lock(&G.lock);
	for (size_t i = 0; i < *n && !at; i++)
		if (!strcmp(arr[i].stage_id, stage_id))
			at = arr[i].at_us;
	pthread_mutex_unlock(&G.lock);
	return at;
}

static long long wait_seen(struct fed_launch *arr, const size_t *n,
			   const char *stage_id, int timeout_ms)
{
	long long end = t_now_ms() + timeout_ms, at;

	while (!(at = seen(arr, n, stage_id)) && t_now_ms() < end)
		t_sleep_ms(1);
	return at;
}

static void report(const char *what, const char *key, double *v, size_t n,
		   int lost)
{
	double p50 = fed_pct(v, n, 50) / 1000.0;
	double p99 = fed_pct(v, n, 99) / 1000.0;
	double max = n ? v[n - 1] / 1000.0 : 0;

	printf("  %-10s p50 %7.2f ms  p99 %7.2f ms  max %7.2f ms  (%zu "
	       "stages, %d not seen)\n",
	       what, p50, p99, max, n, lost);
	printf("BENCH {\"bench\":\"dispatch\",\"case\":\"%s\",\"agents\":%d,"
	       "\"p50_ms\":%.3f,\"p99_ms\":%.3f,\"max_ms\":%.3f,"
	       "\"stages\":%zu,\"not_seen\":%d}\n",
	       key, G.n, p50, p99, max, n, lost);
}

int main(void)
{
	const char *s = getenv("MERIDIAN_BENCH_JOBS");
	int njobs =
	    s && strtol(s, NULL, 10) > 0 ? (int)strtol(s, NULL, 10) : 20;
	const char *na = getenv("MERIDIAN_BENCH_AGENTS");
	int nagents = na && strtol(na, NULL, 10) > NPROBES
			  ? (int)strtol(na, NULL, 10)
			  : NAGENTS;
	double *first = NULL, *dep = NULL;
	size_t nfirst = 0, ndep = 0;
	int lost_first = 0, lost_dep = 0, rv = 0;
	CURL *h = NULL;

	if (njobs > 1000)
		njobs = 1000;
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (sodium_init() < 0)
		return 1;
	curl_global_init(CURL_GLOBAL_DEFAULT);
	mer_log_set_level(MER_LOG_ERROR);
	setenv("BFX_LOG", "warn", 0);
	first = calloc((size_t)njobs, sizeof(*first));
	dep = calloc((size_t)njobs, sizeof(*dep));
	h = curl_easy_init();
	if (!first || !dep || !h) {
		rv = 1;
		goto out;
	}
	printf("dispatch_bench: %d sim agents in-process reporting every 1 s "
	       "to one broker process; %d two-stage jobs, one at a time\n",
	       nagents, njobs);
	if (fed_start("") != 0) {
		fprintf(stderr, "dispatch_bench: broker did not start\n");
		rv = 1;
		goto out;
	}
	int running = fed_grow(nagents, NPROBES);
	int reporting = fed_wait_reporting(nagents * 95 / 100, 90000);
	printf("  %d agents running, %d reporting\n", running, reporting);
	t_sleep_ms(2000);
	for (int j = 0; j < njobs; j++) {
		char body[1024], id[64] = "", sid[200];
		struct bres r;

		/* duration 1 s is 10 ms at the sims' time_scale 100 */
		snprintf(body, sizeof(body),
			 "{\"name\": \"disp\", \"constraints\": {\"sites\": "
			 "{\"allow\": [\"%s\"]}}, \"stages\": ["
			 "{\"name\": \"a\", \"kind\": \"data-prep\", "
			 "\"resources\": {\"cpu\": 1, \"memory_mb\": 256}, "
			 "\"duration_s\": 1, \"command\": [\"a\"]},"
			 "{\"name\": \"b\", \"kind\": \"training\", "
			 "\"after\": [\"a\"], \"resources\": {\"cpu\": 1, "
			 "\"memory_mb\": 256}, \"duration_s\": 1, "
			 "\"command\": [\"b\"]}]}",
			 G.a[j % NPROBES].name);
		if (bfx_req_on(h, &G.F, "POST", "/v1/jobs", BFX_ACME, body,
			       strlen(body), NULL, &r) ||
		    r.status != 201) {
			fprintf(stderr, "dispatch_bench: submit: %ld %s\n",
				r.status, r.body ? r.body : "");
			bres_clear(&r);
			lost_first++;
			lost_dep++;
			continue;
		}
		long long t201 = fed_now_us();
		snprintf(id, sizeof(id), "%s",
			 bres_str(&r, "id") ? bres_str(&r, "id") : "");
		bres_clear(&r);
		snprintf(sid, sizeof(sid), "%s/a#1", id);
		long long la = wait_seen(G.launches, &G.nlaunch, sid, 30000);
		if (!la) {
			char path[128];
			snprintf(path, sizeof(path), "/v1/jobs/%s", id);
			bfx_req_on(h, &G.F, "GET", path, BFX_ACME, NULL, 0,
				   NULL, &r);
			fprintf(stderr,
				"dispatch_bench: %s not launched: "
				"%.600s\n",
				id, r.body ? r.body : "");
			bres_clear(&r);
			lost_first++;
			lost_dep++;
			continue;
		}
		first[nfirst++] = (double)(la - t201);
		long long fa = wait_seen(G.finishes, &G.nfinish, sid, 15000);
		snprintf(sid, sizeof(sid), "%s/b#1", id);
		long long lb = wait_seen(G.launches, &G.nlaunch, sid, 15000);
		if (fa && lb)
			dep[ndep++] = (double)(lb - fa);
		else
			lost_dep++;
	}
	printf("  runnable -> launch at the agent, %d agents connected:\n",
	       G.n);
	report("new job", "new_job", first, nfirst, lost_first);
	report("dependency", "dependency", dep, ndep, lost_dep);
	if (lost_first || lost_dep)
		rv = 1;
out:
	curl_easy_cleanup(h);
	fed_stop();
	free(first);
	free(dep);
	curl_global_cleanup();
	return rv;
}
