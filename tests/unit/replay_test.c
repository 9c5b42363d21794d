/*
 * Tests for the trace-replay simulator (policy/replay) and its generator
 * (policy/tracegen): tiny traces whose money, bytes and times are worked
 * out by hand below, under Meridian and the baselines; the generator's
 * determinism; a generated day replayed in seconds.
 */
#include "common/err.h"
#include "policy/replay.h"
#include "policy/tracegen.h"
#include "tests/harness.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define T_NEAR(a, b)                                                           \
	do {                                                                   \
		double t_x_ = (a), t_y_ = (b);                                 \
		if (!(fabs(t_x_ - t_y_) <= 1e-6 * fmax(1, fabs(t_y_))))        \
			t_fail(__FILE__, __LINE__, "%s == %s: %.9g != %.9g",   \
			       #a, #b, t_x_, t_y_);                            \
	} while (0)

static char path_buf[1024];

static const char *fixture(const char *name)
{
	const char *top = getenv("MERIDIAN_TOP");

	snprintf(path_buf, sizeof(path_buf), "%s/tests/fixtures/replay/%s",
		 top && *top ? top : ".", name);
	return path_buf;
}

static json_t *load_fed(const char *name)
{
	json_error_t je;
	json_t *v = json_load_file(fixture(name), 0, &je);

	if (!v)
		t_fail(__FILE__, __LINE__, "%s: %s", name, je.text);
	return v;
}

static int load_trace(const char *name, struct mer_trace **out, char *err,
		      size_t errlen)
{
	FILE *f = fopen(fixture(name), "rb");
	char buf[65536];
	size_t n;

	*out = NULL;
	if (!f) {
		snprintf(err, errlen, "%s: cannot open", name);
		return MER_EIO;
	}
	n = fread(buf, 1, sizeof(buf), f);
	fclose(f);
	return mer_trace_parse(name, buf, n, out, err, errlen);
}

/* One fixture trace on one fixture federation under one policy. */
struct run {
	json_t *fed;
	struct mer_trace *tr;
	struct mer_policy *pol;
	struct mer_replay_result *r;
};

static int run_fixture(struct run *x, const char *fed, const char *trace,
		       int policy)
{
	struct mer_replay_opts o = {.policy = policy, .seed = 7};
	char err[512];

	memset(x, 0, sizeof(*x));
	x->fed = load_fed(fed);
	if (!x->fed)
		return -1;
	if (load_trace(trace, &x->tr, err, sizeof(err))) {
		t_fail(__FILE__, __LINE__, "trace: %s", err);
		return -1;
	}
	if (mer_policy_load(fixture("policy.json"), &x->pol, err,
			    sizeof(err))) {
		t_fail(__FILE__, __LINE__, "policy: %s", err);
		return -1;
	}
	if (mer_replay_run(x->fed, x->tr, x->pol, &o, &x->r, err,
			   sizeof(err))) {
		t_fail(__FILE__, __LINE__, "replay: %s", err);
		return -1;
	}
	return 0;
}

static void run_free(struct run *x)
{
	mer_replay_result_free(x->r);
	mer_policy_free(x->pol);
	mer_trace_free(x->tr);
	json_decref(x->fed);
}

/*
 * t1: one stage, 4 x a100, estimate 1 h, true 2 h, reads d1 (100 GB at a).
 * Site a: 2.00 USD/GPU-h, no queue. Site b (r2): 1.00 USD/GPU-h, 600 s
 * queue; the r1-r2 link is 1 Gb/s and 0.03 USD/GB, a charges 0.01 USD/GB.
 *
 * Meridian scores (batch time at 10 USD/h; runtime 1 h is the same
 * everywhere): a = 4*2*1 = 8; b = 4*1*1 + 100*(0.01+0.03) + (800 + 600)
 * s * 10/3600 = 4 + 4 + 3.89 = 11.89. So a:
 *   compute 4*2*2 h = 16 USD, egress 0, start 0, end 7200, wait 0,
 *   JCT 7200, GPU use at a 4*7200 / (8*7200) = 50%.
 * cheapest-compute takes b: compute 4*1*2 = 8 USD; egress 100e9 bytes,
 *   100*(0.01+0.03) = 4 USD; transfer 100e9*8/1e9 = 800 s; queue 600 s;
 *   start 1400, end 8600, wait 600, JCT 8600.
 * data-local, round-robin (a is first by name) and least-loaded (a tie,
 *   broken by name) take a, like Meridian.
 */
static void check_t1_at_a(int policy)
{
	struct run x;

	if (run_fixture(&x, "fed-two.json", "t1-single.jsonl", policy) == 0) {
		const struct mer_replay_stage *s = &x.r->stage[0];
		T_EQ_INT(x.r->jobs_completed, 1);
		T_EQ_STR(x.r->sites[s->site].name, "a");
		T_NEAR(x.r->compute_usd, 16);
		T_NEAR(x.r->egress_bytes, 0);
		T_NEAR(x.r->egress_usd, 0);
		T_NEAR(s->start_s, 0);
		T_NEAR(s->end_s, 7200);
		T_NEAR(x.r->wait_mean_s, 0);
		T_NEAR(x.r->jct_mean_s, 7200);
		T_NEAR(x.r->horizon_s, 7200);
		T_NEAR(x.r->sites[0].util, 0.5);
		T_NEAR(x.r->sites[1].util, 0);
		T_EQ_INT(x.r->residency_violations, 0);
		T_EQ_INT(x.r->mismatches, 0);
	}
	run_free(&x);
}

static void test_t1_meridian(void)
{
	check_t1_at_a(MER_RP_MERIDIAN);
}

static void test_t1_data_local(void)
{
	check_t1_at_a(MER_RP_DATA_LOCAL);
}

static void test_t1_round_robin_and_least_loaded(void)
{
	check_t1_at_a(MER_RP_ROUND_ROBIN);
	check_t1_at_a(MER_RP_LEAST_LOADED);
}

static void test_t1_cheapest(void)
{
	struct run x;

	if (run_fixture(&x, "fed-two.json", "t1-single.jsonl",
			MER_RP_CHEAPEST) == 0) {
		const struct mer_replay_stage *s = &x.r->stage[0];
		T_EQ_STR(x.r->sites[s->site].name, "b");
		T_NEAR(x.r->compute_usd, 8);
		T_NEAR(x.r->egress_bytes, 100e9);
		T_NEAR(x.r->egress_usd, 4);
		T_NEAR(s->transfer_s, 800);
		T_NEAR(s->wait_s, 600);
		T_NEAR(s->start_s, 1400);
		T_NEAR(s->end_s, 8600);
		T_NEAR(x.r->jct_mean_s, 8600);
		T_NEAR(x.r->jct_p95_s, 8600);
		/* b ran 4 GPUs for 7200 s of a 8600 s horizon */
		T_NEAR(x.r->sites[1].util, 4.0 * 7200 / (8 * 8600));
	}
	run_free(&x);
}

/*
 * t2: one site with 8 GPUs at 2 USD/h; two jobs at t = 0 each want all 8
 * (true durations = estimates: 3600 s and 1800 s). Whatever the policy,
 * "first" runs 0..3600; "second" waits for it: 3600..5400.
 *   compute 8*2*1 + 8*2*0.5 = 24 USD; waits 0 and 3600, mean 1800;
 *   JCT 3600 and 5400: mean 4500, p95 (nearest rank 2 of 2) 5400;
 *   GPU use (8*3600 + 8*1800) / (8*5400) = 100%.
 */
static void check_t2(int policy)
{
	struct run x;

	if (run_fixture(&x, "fed-one.json", "t2-queue.jsonl", policy) == 0) {
		T_EQ_INT(x.r->jobs_completed, 2);
		T_NEAR(x.r->compute_usd, 24);
		T_NEAR(x.r->stage[1].start_s, 3600);
		T_NEAR(x.r->stage[1].end_s, 5400);
		T_NEAR(x.r->wait_mean_s, 1800);
		T_NEAR(x.r->jct_mean_s, 4500);
		T_NEAR(x.r->jct_p95_s, 5400);
		T_NEAR(x.r->gpu_util, 1.0);
		T_EQ_INT(x.r->mismatches, 0);
	}
	run_free(&x);
}

static void test_t2_queue_all_policies(void)
{
	for (int p = 0; p < MER_RP_COUNT; p++)
		check_t2(p);
}

/*
 * t3: prep (16 cores, 1 h) reads g1 (100 GB at a, tagged gdpr: r1 only)
 * and writes 50 GB of shards; train (4 GPUs, 1 h) reads the shards and so
 * carries gdpr too.
 * Meridian must keep both at a (b is in r2): compute 16*0.02*1 + 4*2*1 =
 *   8.32 USD, no egress, prep 0..3600, train 3600..7200, 0 violations.
 * cheapest-compute puts both at b (0.01 per core-hour, 1.00 per GPU-hour):
 *   prep: 16*0.01 = 0.16 USD, g1 moves a->b: 100e9 bytes, 4 USD, 800 s,
 *   queue 600: 1400..5000. train: released at 5000, shards already at b,
 *   queue 600: 5600..9200, 4*1 = 4 USD. Compute 4.16, egress 4 USD,
 *   mean wait (600 + 600)/2, JCT 9200, 2 violations.
 */
static void test_t3_meridian_keeps_residency(void)
{
	struct run x;

	if (run_fixture(&x, "fed-two.json", "t3-pipeline.jsonl",
			MER_RP_MERIDIAN) == 0) {
		T_EQ_STR(x.r->sites[x.r->stage[0].site].name, "a");
		T_EQ_STR(x.r->sites[x.r->stage[1].site].name, "a");
		T_NEAR(x.r->compute_usd, 8.32);
		T_NEAR(x.r->egress_bytes, 0);
		T_NEAR(x.r->stage[1].release_s, 3600);
		T_NEAR(x.r->stage[1].end_s, 7200);
		T_NEAR(x.r->jct_mean_s, 7200);
		T_EQ_INT(x.r->residency_violations, 0);
	}
	run_free(&x);
}

static void test_t3_cheapest_violates(void)
{
	struct run x;

	if (run_fixture(&x, "fed-two.json", "t3-pipeline.jsonl",
			MER_RP_CHEAPEST) == 0) {
		const struct mer_replay_stage *p = &x.r->stage[0],
					      *t = &x.r->stage[1];
		T_EQ_STR(x.r->sites[p->site].name, "b");
		T_EQ_STR(x.r->sites[t->site].name, "b");
		T_NEAR(x.r->compute_usd, 4.16);
		T_NEAR(x.r->egress_bytes, 100e9);
		T_NEAR(x.r->egress_usd, 4);
		T_NEAR(p->start_s, 1400);
		T_NEAR(p->end_s, 5000);
		T_NEAR(t->release_s, 5000);
		T_NEAR(t->start_s, 5600);
		T_NEAR(t->end_s, 9200);
		T_NEAR(x.r->wait_mean_s, 600);
		T_NEAR(x.r->jct_mean_s, 9200);
		T_EQ_INT(x.r->residency_violations, 2);
	}
	run_free(&x);
}

static void test_trace_errors(void)
{
	struct mer_trace *tr = NULL;
	char err[512];
	const char *bad_json = "{\"at\": 0}\n\n{\"at\": 1, \"job\": ";

	T_EXPECT(load_trace("bad-true.jsonl", &tr, err, sizeof(err)) ==
		 MER_EINVAL);
	T_CONTAINS(err, "bad-true.jsonl:1: true_duration_s.nope: no such");
	T_EXPECT(tr == NULL);
	T_EXPECT(mer_trace_parse("x.jsonl", bad_json, strlen(bad_json), &tr,
				 err, sizeof(err)) == MER_EPARSE);
	T_CONTAINS(err, "x.jsonl:3:");
	const char *no_dur = "{\"at\": 0, \"job\": {\"name\": \"x\", "
			     "\"stages\": [{\"name\": \"s\", \"resources\": "
			     "{\"cpu\": 1}}]}}\n";
	T_EXPECT(mer_trace_parse("y.jsonl", no_dur, strlen(no_dur), &tr, err,
				 sizeof(err)) == MER_EINVAL);
	T_CONTAINS(err, "y.jsonl:1: true_duration_s.s: required");
	const char *unsorted =
	    "{\"at\": 50, \"job\": {\"name\": \"late\", \"stages\": "
	    "[{\"name\": "
	    "\"s\", \"resources\": {\"cpu\": 1}, \"duration_s\": 5}]}}\n"
	    "{\"at\": 10, \"job\": {\"name\": \"early\", \"stages\": "
	    "[{\"name\": \"s\", \"resources\": {\"cpu\": 1}, \"duration_s\": "
	    "5}]}}\n";
	T_OK(mer_trace_parse("z.jsonl", unsorted, strlen(unsorted), &tr, err,
			     sizeof(err)));
	T_EQ_INT(tr->njobs, 2);
	T_EQ_STR(tr->jobs[0].job->name, "early");
	T_NEAR(tr->jobs[1].true_s[0], 5);
	mer_trace_free(tr);
	int p;
	T_OK(mer_replay_policy_parse("data-local", &p));
	T_EQ_INT(p, MER_RP_DATA_LOCAL);
	T_EXPECT(mer_replay_policy_parse("fastest", &p) == MER_EINVAL);
}

static char *dump_all(const json_t *a, const json_t *b, const json_t *c)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);

	json_dumpf(a, f, JSON_COMPACT | JSON_SORT_KEYS);
	json_dumpf(b, f, JSON_COMPACT | JSON_SORT_KEYS);
	mer_tracegen_write_lines(f, c);
	fclose(f);
	return buf;
}

static char *generate(uint64_t seed)
{
	struct mer_tracegen_opts o;
	json_t *fed = NULL, *pol = NULL, *tr = NULL;
	char *out = NULL;

	mer_tracegen_defaults(&o);
	o.seed = seed;
	o.sites = 9;
	o.regions = 4;
	o.hours = 6;
	if (!mer_tracegen_federation(&o, &fed) &&
	    !mer_tracegen_policy(&o, &pol) && !mer_tracegen_trace(&o, fed, &tr))
		out = dump_all(fed, pol, tr);
	json_decref(fed);
	json_decref(pol);
	json_decref(tr);
	return out;
}

static void test_generator_deterministic(void)
{
	char *a = generate(42), *b = generate(42), *c = generate(43);

	T_ASSERT(a && b && c);
	T_EXPECT(strcmp(a, b) == 0);
	T_EXPECT(strcmp(a, c) != 0);
	/* the mix: every kind of job appears in a few hours of trace */
	T_CONTAINS(a, "\"pipeline-");
	T_CONTAINS(a, "\"train-");
	T_CONTAINS(a, "\"sweep-");
	T_CONTAINS(a, "\"service-");
	T_CONTAINS(a, "\"gdpr\"");
	/* the same bytes from any compiler: random draws are sequenced, not
	 * left to the order C evaluates arguments in (seed 42, 9 sites, 4
	 * regions, 6 h gives these; gcc and clang builds both check it) */
	T_CONTAINS(a, "{\"at\":628.0,\"job\":{\"name\":\"sweep-00000\","
		      "\"priority\":\"best-effort\",\"stages\":[{"
		      "\"duration_s\":8498.0,");
	free(a);
	free(b);
	free(c);
	struct mer_tracegen_opts o;
	json_t *fed = NULL;
	mer_tracegen_defaults(&o);
	o.regions = o.sites + 1;
	T_EXPECT(mer_tracegen_federation(&o, &fed) == MER_EINVAL);
	T_EXPECT(fed == NULL);
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* A generated day (24 sites, ~240 jobs) under every policy: each replays
 * in seconds, accounts consistently, and Meridian breaks no residency. */
static void test_day_replays_in_seconds(void)
{
	struct mer_tracegen_opts o;
	json_t *fed = NULL, *pj = NULL, *recs = NULL;
	struct mer_trace *tr = NULL;
	struct mer_policy *pol = NULL;
	char err[512];

	mer_tracegen_defaults(&o);
	T_OK(mer_tracegen_federation(&o, &fed));
	T_OK(mer_tracegen_policy(&o, &pj));
	T_OK(mer_tracegen_trace(&o, fed, &recs));
	if (mer_trace_from_records(recs, &tr, err, sizeof(err)) ||
	    mer_policy_from_json(pj, NULL, &pol, err, sizeof(err))) {
		t_fail(__FILE__, __LINE__, "%s", err);
		goto out;
	}
	T_EXPECT(tr->njobs > 150);
	T_EQ_INT(tr->epoch, o.epoch);
	for (int p = 0; p < MER_RP_COUNT; p++) {
		struct mer_replay_opts ro = {.policy = p, .seed = 3};
		struct mer_replay_result *r = NULL;
		double t0 = now_s();
		if (mer_replay_run(fed, tr, pol, &ro, &r, err, sizeof(err))) {
			t_fail(__FILE__, __LINE__, "%s: %s",
			       mer_replay_policy_name(p), err);
			continue;
		}
		double dt = now_s() - t0;
		printf("    %-16s %.1f simulated h in %.3f s\n",
		       mer_replay_policy_name(p), r->horizon_s / 3600, dt);
		T_EXPECT(dt < 30);
		T_EXPECT(r->horizon_s >= 24 * 3600 * 0.9);
		T_EQ_INT(r->jobs, tr->njobs);
		T_EQ_INT(r->jobs_completed + r->jobs_unplaced, r->jobs);
		T_EQ_INT(r->mismatches, 0);
		double site_usd = 0;
		for (size_t s = 0; s < r->nsites; s++)
			site_usd += r->sites[s].compute_usd;
		T_NEAR(site_usd, r->compute_usd);
		T_EXPECT(r->gpu_util > 0 && r->gpu_util <= 1);
		if (p == MER_RP_MERIDIAN)
			T_EQ_INT(r->residency_violations, 0);
		mer_replay_result_free(r);
	}
out:
	mer_policy_free(pol);
	mer_trace_free(tr);
	json_decref(recs);
	json_decref(pj);
	json_decref(fed);
}

static const struct t_case cases[] = {
    {"t1_meridian", test_t1_meridian},
    {"t1_data_local", test_t1_data_local},
    {"t1_round_robin_and_least_loaded", test_t1_round_robin_and_least_loaded},
    {"t1_cheapest", test_t1_cheapest},
    {"t2_queue_all_policies", test_t2_queue_all_policies},
    {"t3_meridian_keeps_residency", test_t3_meridian_keeps_residency},
    {"t3_cheapest_violates", test_t3_cheapest_violates},
    {"trace_errors", test_trace_errors},
    {"generator_deterministic", test_generator_deterministic},
    {"day_replays_in_seconds", test_day_replays_in_seconds},
};

T_MAIN("replay", cases)
