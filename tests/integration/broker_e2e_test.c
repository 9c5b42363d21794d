/*
 * End to end with real agents: a real etcd, bin/meridian-broker with its
 * agent link, and two bin/meridian-agent processes with the sim scheduler
 * that join with tokens from POST /v1/tokens. A three-stage job goes
 * submit -> placed -> dispatched -> running -> succeeded, stages in
 * dependency order, on the sites the engine chose.
 */
#include "tests/integration/broker_fixture.h"

#include <sodium.h>

#include "common/err.h"
#include "tests/harness.h"

static struct bfx F;
static struct t_proc *agents[2];
static const char *site_names[2] = {"sim-a", "sim-b"};
static const char *site_regions[2] = {"eu-west-1", "us-east-1"};

static int start_agent(int i)
{
	const struct bfx_site s = {site_names[i], site_regions[i],
				   i ? "2.5" : "2.0", "0.01"};
	return bfx_agent_join(&F, &s, &agents[i]);
}

static void dump_logs(void)
{
	static const char *const names[] = {"broker", "sim-a", "sim-b"};

	bfx_dump_logs(&F, names, 3);
}

static void teardown(void)
{
	for (int i = 0; i < 2; i++)
		t_proc_stop(agents[i], 1000, NULL);
	if (F.etcd)
		bfx_free(&F);
}

static void test_three_stages_run_in_order(void)
{
	struct bres r;
	char id[64], path[128];

	if (sodium_init() < 0)
		return;
	curl_global_init(CURL_GLOBAL_DEFAULT);
	atexit(teardown);
	T_OK(
	    bfx_start_opts(&F, "\"placement\": {\"interval\": \"300ms\"},", 1));
	for (int i = 0; i < 2; i++) {
		int rv = start_agent(i);
		if (rv)
			dump_logs();
		T_OK(rv);
	}
	int reported = bfx_sites_reported(&F, "sim-a", "sim-b", 20000);
	if (!reported)
		dump_logs();
	T_ASSERT(reported);

	T_OK(bfx_req(
	    &F, "POST", "/v1/jobs", BFX_ACME,
	    "{\"name\": \"e2e\", \"constraints\": {\"sites\": {\"allow\": "
	    "[\"sim-a\", \"sim-b\"]}}, \"stages\": ["
	    "{\"name\": \"prep\", \"kind\": \"data-prep\", \"resources\": "
	    "{\"cpu\": 4, \"memory_mb\": 4096}, \"duration_s\": 30, "
	    "\"command\": [\"prep\"]},"
	    "{\"name\": \"train\", \"kind\": \"training\", \"after\": "
	    "[\"prep\"], \"resources\": {\"cpu\": 8, \"memory_mb\": 8192, "
	    "\"gpu\": {\"count\": 2, \"models\": [\"a100\"]}}, "
	    "\"duration_s\": 30, \"command\": [\"train\"]},"
	    "{\"name\": \"serve\", \"kind\": \"inference\", \"after\": "
	    "[\"train\"], \"resources\": {\"cpu\": 2, \"memory_mb\": 2048}, "
	    "\"duration_s\": 30, \"command\": [\"serve\"]}]}",
	    NULL, &r));
	T_EQ_INT(r.status, 201);
	snprintf(id, sizeof(id), "%s", bfx_nz(bres_str(&r, "id")));
	bres_clear(&r);
	snprintf(path, sizeof(path), "/v1/jobs/%s", id);

	json_t *job = NULL;
	int saw_running = 0;
	T_OK(bfx_wait_ended(&F, path, BFX_ACME, 60000, &job, &saw_running));
	if (!job)
		dump_logs();
	T_ASSERT(job != NULL);
	T_EQ_STR(json_string_value(json_object_get(job, "state")), "succeeded");
	T_EXPECT(saw_running);
	json_t *stages = json_object_get(job, "stages");
	T_EQ_INT(json_array_size(stages), 3);
	for (size_t i = 0; i < 3; i++) {
		json_t *s = json_array_get(stages, i);
		const char *site =
		    json_string_value(json_object_get(s, "site"));
		T_EQ_STR(json_string_value(json_object_get(s, "state")),
			 "succeeded");
		T_EXPECT(site && (strcmp(site, "sim-a") == 0 ||
				  strcmp(site, "sim-b") == 0));
		T_EQ_INT(bfx_ival(s, "exit_code"), 0);
		T_EQ_INT(bfx_ival(s, "attempts"), 1);
		if (i > 0) {
			json_t *p = json_array_get(stages, i - 1);
			/* launched only once its dependency finished */
			T_EXPECT(bfx_ival(s, "dispatched_at") >=
				 bfx_ival(p, "finished_at"));
		}
	}
	json_decref(job);

	/* The engine's choice is what ran. */
	snprintf(path, sizeof(path), "/v1/jobs/%s/placement", id);
	T_OK(bfx_req(&F, "GET", path, BFX_ACME, NULL, NULL, &r));
	T_EQ_INT(r.status, 200);
	bres_clear(&r);

	T_OK(bfx_req(&F, "GET", "/metrics", NULL, NULL, NULL, &r));
	T_CONTAINS(r.body, "meridian_agents_connected 2\n");
	T_CONTAINS(r.body, "meridian_link_rejected_total{reason=");
	bres_clear(&r);
}

/* Cancel reaches a running stage: the agent stops it, the job ends
 * cancelled. */
static void test_cancel_running(void)
{
	struct bres r;
	char path[128];

	T_ASSERT(F.proc != NULL);
	T_OK(bfx_req(
	    &F, "POST", "/v1/jobs", BFX_ACME,
	    "{\"name\": \"long\", \"constraints\": {\"sites\": {\"allow\": "
	    "[\"sim-a\", \"sim-b\"]}}, \"stages\": [{\"name\": \"run\", "
	    "\"kind\": \"generic\", \"resources\": {\"cpu\": 1, "
	    "\"memory_mb\": 512}, \"duration_s\": 100000, \"command\": "
	    "[\"sleep\"]}]}",
	    NULL, &r));
	T_EQ_INT(r.status, 201);
	snprintf(path, sizeof(path), "/v1/jobs/%s", bfx_nz(bres_str(&r, "id")));
	bres_clear(&r);
	long long end = t_now_ms() + 20000;
	int running = 0;
	while (!running && t_now_ms() < end) {
		T_OK(bfx_req(&F, "GET", path, BFX_ACME, NULL, NULL, &r));
		running = strcmp(bfx_nz(bres_str(&r, "state")), "running") == 0;
		bres_clear(&r);
		t_sleep_ms(100);
	}
	T_ASSERT(running);
	T_OK(bfx_req(&F, "DELETE", path, BFX_ACME, NULL, NULL, &r));
	T_EQ_INT(r.status, 202);
	bres_clear(&r);
	end = t_now_ms() + 20000;
	int cancelled = 0;
	while (!cancelled && t_now_ms() < end) {
		T_OK(bfx_req(&F, "GET", path, BFX_ACME, NULL, NULL, &r));
		cancelled =
		    strcmp(bfx_nz(bres_str(&r, "state")), "cancelled") == 0;
		bres_clear(&r);
		t_sleep_ms(100);
	}
	if (!cancelled)
		dump_logs();
	T_EXPECT(cancelled);
}

static void test_clean_exit(void)
{
	T_ASSERT(F.proc != NULL);
	for (int i = 0; i < 2; i++) {
		t_proc_stop(agents[i], 5000, NULL);
		agents[i] = NULL;
	}
	T_EQ_INT(bfx_stop_checked(&F), 0);
}

static const struct t_case cases[] = {
    {"three_stages_run_in_order", test_three_stages_run_in_order},
    {"cancel_running", test_cancel_running},
    {"clean_exit", test_clean_exit},
};

T_MAIN("broker_e2e", cases)
