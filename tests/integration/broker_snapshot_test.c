/*
 * Where the broker's view of the sites comes from (docs/STATE.md
 * "Placement", "Site reports"), with a real etcd, the broker and one sim
 * agent: GET /v1/sites reads the summary the broker holds in memory even
 * when etcd has none; the placer places on it from memory; a drain through
 * the API reaches the placer's cached site records at once; a restarted
 * broker places on etcd's copy before the agent reports again; a summary
 * written to etcd by another process is found; dry-runs that rebuild the
 * snapshot use the placer's builder (no ranges over the site records).
 */
#include "tests/integration/broker_fixture.h"

#include <sodium.h>

#include "common/err.h"
#include "tests/harness.h"

static struct bfx F;
static struct t_proc *agent;
static json_t *summary; /* snap-a's summary, as GET /v1/sites showed it */

static void teardown(void)
{
	t_proc_stop(agent, 1000, NULL);
	json_decref(summary);
	if (F.etcd)
		bfx_free(&F);
}

/* GET /v1/sites/name into *r (cleared by the caller). */
static int get_site(const char *name, struct bres *r)
{
	char path[128];

	snprintf(path, sizeof(path), "/v1/sites/%s", name);
	return bfx_req(&F, "GET", path, BFX_ADMIN, NULL, NULL, r);
}

static int etcd_has(const char *key)
{
	struct mer_etcd_kv kv;
	int rv = mer_etcd_get(F.cli, key, strlen(key), &kv, NULL);

	mer_etcd_kv_clear(&kv);
	return rv == 0;
}

/* A one-stage job pinned to site; id gets its id. */
static int submit_to(const char *site, char *id, size_t n)
{
	char body[512];
	struct bres r;

	snprintf(body, sizeof(body),
		 "{\"name\": \"pin\", \"constraints\": {\"sites\": "
		 "{\"allow\": [\"%s\"]}}, \"stages\": [{\"name\": \"s\", "
		 "\"kind\": \"generic\", \"resources\": {\"cpu\": 1, "
		 "\"memory_mb\": 256}, \"duration_s\": 600}]}",
		 site);
	int rv = bfx_req(&F, "POST", "/v1/jobs", BFX_ACME, body, NULL, &r);
	if (rv == 0 && r.status != 201)
		rv = MER_EREMOTE;
	snprintf(id, n, "%s", rv ? "" : bfx_nz(bres_str(&r, "id")));
	bres_clear(&r);
	return rv;
}

/* The job's record (new reference) once its stage has a site, or its last
 * record after ms. */
static json_t *wait_placed(const char *id, long long ms)
{
	char path[128];
	long long end = t_now_ms() + ms;
	json_t *last = NULL;

	snprintf(path, sizeof(path), "/v1/jobs/%s", id);
	while (t_now_ms() < end) {
		struct bres r;
		if (bfx_req(&F, "GET", path, BFX_ACME, NULL, NULL, &r))
			break;
		json_decref(last);
		last = json_incref(r.json);
		bres_clear(&r);
		json_t *s0 = json_array_get(json_object_get(last, "stages"), 0);
		if (json_string_value(json_object_get(s0, "site")))
			return last;
		t_sleep_ms(100);
	}
	return last;
}

static const char *stage_field(const json_t *rec, const char *key)
{
	return json_string_value(json_object_get(
	    json_array_get(json_object_get(rec, "stages"), 0), key));
}

static void cancel(const char *id)
{
	char path[128];
	struct bres r;

	snprintf(path, sizeof(path), "/v1/jobs/%s", id);
	if (bfx_req(&F, "DELETE", path, BFX_ACME, NULL, NULL, &r) == 0)
		bres_clear(&r);
}

static void dump_logs(void)
{
	static const char *const names[] = {"broker", "snap-a"};

	bfx_dump_logs(&F, names, 2);
}

/* A job allowed only on site is placed there within ms (checked), then
 * cancelled. submit_to's error when it could not be submitted. */
static int placed_on(const char *site, int ms)
{
	char id[64];
	json_t *rec;
	int rv;

	if ((rv = submit_to(site, id, sizeof(id))))
		return rv;
	rec = wait_placed(id, ms);
	T_EQ_STR(bfx_nz(stage_field(rec, "site")), site);
	json_decref(rec);
	cancel(id);
	return 0;
}

/* The agent reports, its summary is flushed to etcd; then the agent is
 * stopped for good (and no site is marked lost while the cases run). */
static void test_setup(void)
{
	const struct bfx_site s = {"snap-a", "eu-west-1", "2.0", "0.01"};
	const char *key = "/meridian/site-reports/snap-a";

	if (sodium_init() < 0)
		return;
	curl_global_init(CURL_GLOBAL_DEFAULT);
	atexit(teardown);
	T_OK(bfx_start_opts(&F,
			    "\"placement\": {\"interval\": \"300ms\"},"
			    " \"sites\": {\"report_interval\": \"1s\","
			    " \"lost_after\": 1000},",
			    1));
	int rv = bfx_agent_join(&F, &s, &agent);
	if (rv)
		dump_logs();
	T_ASSERT(rv == 0);
	long long end = t_now_ms() + 20000;
	while (t_now_ms() < end &&
	       !(bfx_site_reported(&F, "snap-a") && etcd_has(key)))
		t_sleep_ms(100);
	T_ASSERT(bfx_site_reported(&F, "snap-a") && etcd_has(key));
	T_OK(t_proc_stop(agent, 5000, NULL));
	agent = NULL;
	/* Past any flush of its last summary. */
	t_sleep_ms(800);
}

/* Without etcd's copy, GET /v1/sites still shows the summary the broker
 * holds, with its age. */
static void test_sites_read_memory(void)
{
	const char *key = "/meridian/site-reports/snap-a";
	struct bres r;

	T_OK(mer_etcd_delete(F.cli, key, strlen(key), NULL, NULL));
	T_ASSERT(!etcd_has(key));
	T_OK(get_site("snap-a", &r));
	T_EQ_INT(r.status, 200);
	T_EQ_STR(bfx_nz(bres_str(&r, "source")), "joined");
	T_EXPECT(json_is_object(json_object_get(r.json, "summary")));
	json_t *age = json_object_get(r.json, "last_report_age_s");
	T_EXPECT(json_is_integer(age) && json_integer_value(age) >= 0 &&
		 json_integer_value(age) < 60);
	summary = json_incref(json_object_get(r.json, "summary"));
	bres_clear(&r);
	T_OK(bfx_req(&F, "GET", "/v1/sites", BFX_ADMIN, NULL, NULL, &r));
	T_EQ_INT(r.status, 200);
	json_t *v;
	size_t i;
	int seen = 0;
	json_array_foreach (json_object_get(r.json, "sites"), i, v)
		if (strcmp(
			bfx_nz(json_string_value(json_object_get(v, "name"))),
			"snap-a") == 0)
			seen = json_is_integer(
			    json_object_get(v, "last_report_age_s"));
	T_EXPECT(seen);
	bres_clear(&r);
}

/* The placer places on the summary in memory (etcd has none). */
static void test_placed_from_memory(void)
{
	T_OK(placed_on("snap-a", 10000));
}

/*
 * Dry-runs (and submissions: the same snapshot) whose cached snapshot has
 * expired are rebuilt by the placer's builder, from the summary in memory
 * and the cached site records: one a little over a second apart, each a
 * rebuild, cost etcd next to no ranges (at most the records' periodic
 * re-read), where a build from etcd (site-reports/, site-status/, sites/)
 * ranged three times each. Each still sees snap-a, known from memory
 * only (etcd's copy was deleted above).
 */
static void test_dry_runs_range_no_site_records(void)
{
	const char *body =
	    "{\"name\": \"dry\", \"constraints\": {\"sites\": "
	    "{\"allow\": [\"snap-a\"]}}, \"stages\": [{\"name\": \"s\", "
	    "\"kind\": \"generic\", \"resources\": {\"cpu\": 1, "
	    "\"memory_mb\": 256}, \"duration_s\": 600}]}";
	const int n = 6;

	/* The idle broker's own ranges over as long, for comparison. */
	long long i0 = bfx_etcd_ranges(&F);
	t_sleep_ms(n * 1100);
	long long i1 = bfx_etcd_ranges(&F);
	T_ASSERT(i0 >= 0 && i1 >= i0);
	long long r0 = bfx_etcd_ranges(&F);
	for (int i = 0; i < n; i++) {
		struct bres r;
		t_sleep_ms(1100); /* past the snapshot's 1 s */
		T_OK(bfx_req(&F, "POST", "/v1/placements:dry-run", BFX_ACME,
			     body, NULL, &r));
		T_EQ_INT(r.status, 200);
		T_EXPECT(r.body && strstr(r.body, "\"snap-a\""));
		bres_clear(&r);
	}
	long long r1 = bfx_etcd_ranges(&F);
	printf("    %d dry-runs: %lld etcd ranges (idle: %lld)\n", n, r1 - r0,
	       i1 - i0);
	T_ASSERT(r1 - r0 - (i1 - i0) < n);
}

/* A drain reaches the placer at once (its site records are read again
 * after a change), and so does the undrain. */
static void test_drain_reaches_placer(void)
{
	char id[64];
	struct bres r;

	T_OK(bfx_req(&F, "POST", "/v1/sites/snap-a:drain", BFX_ADMIN, "{}",
		     NULL, &r));
	T_EQ_INT(r.status, 200);
	bres_clear(&r);
	T_OK(submit_to("snap-a", id, sizeof(id)));
	json_t *rec = wait_placed(id, 2000);
	T_EXPECT(stage_field(rec, "site") == NULL);
	T_CONTAINS(bfx_nz(stage_field(rec, "reason")), "drained");
	json_decref(rec);
	T_OK(bfx_req(&F, "POST", "/v1/sites/snap-a:undrain", BFX_ADMIN, "{}",
		     NULL, &r));
	T_EQ_INT(r.status, 200);
	bres_clear(&r);
	rec = wait_placed(id, 10000);
	T_EQ_STR(bfx_nz(stage_field(rec, "site")), "snap-a");
	json_decref(rec);
	cancel(id);
}

/* After a restart, before the agent reports again, placement uses etcd's
 * copy of its summary. */
static void test_restart_uses_etcd_copy(void)
{
	const char *key = "/meridian/site-reports/snap-a";

	T_ASSERT(summary != NULL);
	char *text = json_dumps(summary, JSON_COMPACT);
	T_ASSERT(text != NULL);
	int rv =
	    mer_etcd_put(F.cli, key, strlen(key), text, strlen(text), 0, NULL);
	free(text);
	T_OK(rv);
	bfx_kill(&F, SIGKILL);
	T_OK(bfx_spawn(&F));
	T_OK(placed_on("snap-a", 10000));
}

/* A summary that another process wrote to etcd for a site this broker
 * never heard from is placed on (within the site records' refresh). */
static void test_new_summary_in_etcd(void)
{
	const char *key = "/meridian/site-reports/ext-1";
	const char *rep =
	    "{\"name\": \"ext-1\", \"region\": \"eu-west-1\", "
	    "\"scheduler\": \"sim\", \"pools\": [{\"name\": \"p\", "
	    "\"resources\": {\"cpu\": {\"total\": 64, \"free\": 64}, "
	    "\"memory_mb\": {\"total\": 65536, \"free\": 65536}}}]}";

	/* A round first, so that the placer has read etcd's copy before. */
	T_OK(placed_on("snap-a", 10000));
	T_OK(mer_etcd_put(F.cli, key, strlen(key), rep, strlen(rep), 0, NULL));
	T_OK(placed_on("ext-1", 25000));
}

static void test_clean_exit(void)
{
	T_ASSERT(F.proc != NULL);
	T_EQ_INT(bfx_stop_checked(&F), 0);
}

static const struct t_case cases[] = {
    {"setup", test_setup},
    {"sites_read_memory", test_sites_read_memory},
    {"placed_from_memory", test_placed_from_memory},
    {"dry_runs_range_no_site_records", test_dry_runs_range_no_site_records},
    {"drain_reaches_placer", test_drain_reaches_placer},
    {"restart_uses_etcd_copy", test_restart_uses_etcd_copy},
    {"new_summary_in_etcd", test_new_summary_in_etcd},
    {"clean_exit", test_clean_exit},
};

T_MAIN("broker_snapshot", cases)
