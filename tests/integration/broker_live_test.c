/*
 * What the broker keeps of live work, with a real etcd, the broker and two
 * sim agents: a stage that succeeds at one site leaves its output in
 * "<p>/replicas/<site>/<name>", and a later job reading that name (found
 * nowhere else) is placed next to it, also after a broker restart (the
 * replica and the stage's success were written by one etcd txn, and
 * revoking the site deletes it, from the broker's memory too: the site
 * joining again is placed on but shows none of its old outputs); GPUs
 * that earlier rounds' stages hold count against per-model GPU quotas; a
 * preemption victim's cancel survives a broker killed before the agent
 * took it.
 */
#include "tests/integration/broker_fixture.h"

#include <sodium.h>
#include <unistd.h>

#include "common/err.h"
#include "tests/harness.h"

static struct bfx F;
static struct t_proc *agents[2];
static const char *site_names[2] = {"sim-a", "sim-b"};
static const char *site_regions[2] = {"eu-west-1", "us-east-1"};

static int start_agent(int i)
{
	/* sim-a is the cheaper site: only data gravity draws work to
	 * sim-b. */
	const struct bfx_site s = {site_names[i], site_regions[i],
				   i ? "2.5" : "2.0", i ? "0.05" : "0.01"};
	return bfx_agent_join(&F, &s, &agents[i]);
}

/* Starts agent i again with the config and state start_agent wrote. */
static int respawn_agent(int i)
{
	return bfx_agent_respawn(&F, site_names[i], &agents[i]);
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

/* Submits body; id gets the job id. */
static int submit(const char *body, char *id, size_t n)
{
	struct bres r;
	int rv = bfx_req(&F, "POST", "/v1/jobs", BFX_ACME, body, NULL, &r);

	if (rv == 0 && r.status != 201)
		rv = MER_EREMOTE;
	snprintf(id, n, "%s", rv ? "" : bfx_nz(bres_str(&r, "id")));
	bres_clear(&r);
	return rv;
}

/* Waits for the job's state to be one of want (a "|"-separated list);
 * the record in *out (NULL on timeout). */
static void wait_state(const char *id, const char *want, long long ms,
		       json_t **out)
{
	char path[128], pat[64];
	long long end = t_now_ms() + ms;

	*out = NULL;
	snprintf(path, sizeof(path), "/v1/jobs/%s", id);
	while (t_now_ms() < end) {
		struct bres r;
		if (bfx_req(&F, "GET", path, BFX_ACME, NULL, NULL, &r))
			break;
		snprintf(pat, sizeof(pat), "|%s|",
			 bfx_nz(bres_str(&r, "state")));
		char w[128];
		snprintf(w, sizeof(w), "|%s|", want);
		if (bres_str(&r, "state") && strstr(w, pat)) {
			*out = json_incref(r.json);
			bres_clear(&r);
			return;
		}
		bres_clear(&r);
		t_sleep_ms(100);
	}
}

static const char *stage_site(const json_t *job, size_t i)
{
	return json_string_value(json_object_get(
	    json_array_get(json_object_get(job, "stages"), i), "site"));
}

/* Waits for job id to end: it must have succeeded, its first stage on
 * site. -1 (logs dumped) when it did not end in time. */
static int succeeded_on(const char *id, const char *site)
{
	json_t *job = NULL;

	wait_state(id, "succeeded|failed", 60000, &job);
	if (!job) {
		dump_logs();
		return -1;
	}
	T_EQ_STR(json_string_value(json_object_get(job, "state")), "succeeded");
	T_EQ_STR(bfx_nz(stage_site(job, 0)), site);
	json_decref(job);
	return 0;
}

/* text (a job record, freed here) must name input_missing; printed when
 * it does not. */
static void expect_input_missing(char *text)
{
	if (!text || !strstr(text, "input_missing"))
		printf("    %s\n", bfx_nz(text));
	T_EXPECT(text && strstr(text, "input_missing"));
	free(text);
}

static const char consumer[] =
    "{\"name\": \"use\", \"constraints\": {\"sites\": {\"allow\": "
    "[\"sim-a\", \"sim-b\"]}}, \"stages\": [{\"name\": \"read\", "
    "\"kind\": \"generic\", \"resources\": {\"cpu\": 2, \"memory_mb\": "
    "512}, \"duration_s\": 30, \"inputs\": [{\"name\": \"corpus-7\"}]}]}";

static const char *stage_state_in(const json_t *rec, size_t i)
{
	return json_string_value(json_object_get(
	    json_array_get(json_object_get(rec, "stages"), i), "state"));
}

/*
 * The replica at key, written at revision rev, and the record saying its
 * stage succeeded were written by one txn: at rev the record was written
 * too and says succeeded (as does the job's index entry), and one
 * revision before neither the replica nor the success was there.
 */
static void replica_with_success(const char *id, const char *key, int64_t rev)
{
	char jkey[128], ikey[128];
	struct mer_etcd_kv kv;
	json_t *rec;

	snprintf(jkey, sizeof(jkey), "/meridian/jobs/%s", id);
	snprintf(ikey, sizeof(ikey), "/meridian/job-index/acme/%s", id);
	T_OK(bfx_get_at(&F, jkey, rev, &kv));
	T_EQ_INT(kv.mod_revision, rev);
	rec = json_loadb(kv.value, kv.value_len, 0, NULL);
	mer_etcd_kv_clear(&kv);
	T_EQ_STR(bfx_nz(stage_state_in(rec, 0)), "succeeded");
	json_decref(rec);
	T_OK(bfx_get_at(&F, ikey, rev, &kv));
	T_EQ_INT(kv.mod_revision, rev);
	rec = json_loadb(kv.value, kv.value_len, 0, NULL);
	mer_etcd_kv_clear(&kv);
	T_EQ_STR(bfx_nz(json_string_value(json_object_get(rec, "state"))),
		 "succeeded");
	json_decref(rec);

	T_EQ_INT(bfx_get_at(&F, key, rev - 1, &kv), MER_ENOTFOUND);
	T_OK(bfx_get_at(&F, jkey, rev - 1, &kv));
	rec = json_loadb(kv.value, kv.value_len, 0, NULL);
	mer_etcd_kv_clear(&kv);
	T_EXPECT(strcmp(bfx_nz(stage_state_in(rec, 0)), "succeeded") != 0);
	json_decref(rec);
}

static void test_output_becomes_replica(void)
{
	char id[64];
	json_t *job = NULL;

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
	T_ASSERT(reported);

	/* Before any job made it, the dataset is nowhere: pending. */
	T_OK(submit(consumer, id, sizeof(id)));
	/* The placer's reasons (input_missing), once it has looked. */
	char *text = NULL;
	long long end = t_now_ms() + 10000;
	while (t_now_ms() < end) {
		wait_state(id, "pending", 1000, &job);
		free(text);
		text = job ? json_dumps(job, 0) : NULL;
		json_decref(job);
		if (text && strstr(text, "input_missing"))
			break;
		t_sleep_ms(100);
	}
	expect_input_missing(text);
	/* Out of the way of what follows. */
	char path[128];
	struct bres r;
	snprintf(path, sizeof(path), "/v1/jobs/%s", id);
	T_OK(bfx_req(&F, "DELETE", path, BFX_ACME, NULL, NULL, &r));
	bres_clear(&r);

	/* A producer pinned to sim-b (the dearer site). */
	T_OK(submit("{\"name\": \"make\", \"constraints\": {\"sites\": "
		    "{\"allow\": [\"sim-b\"]}}, \"stages\": [{\"name\": "
		    "\"prep\", \"kind\": \"data-prep\", \"resources\": "
		    "{\"cpu\": 2, \"memory_mb\": 512}, \"duration_s\": 30, "
		    "\"outputs\": [{\"name\": \"corpus-7\", \"bytes\": "
		    "40000000000000, \"tags\": [\"t1\"]}]}]}",
		    id, sizeof(id)));
	T_ASSERT(succeeded_on(id, "sim-b") == 0);

	/* The replica record. */
	struct mer_etcd_kv kv = {0};
	const char key[] = "/meridian/replicas/sim-b/corpus-7";
	T_OK(mer_etcd_get(F.cli, key, strlen(key), &kv, NULL));
	json_t *o = json_loadb(kv.value, kv.value_len, 0, NULL);
	int64_t rev = kv.mod_revision;
	mer_etcd_kv_clear(&kv);
	T_ASSERT(o != NULL);
	T_EXPECT(json_number_value(json_object_get(o, "bytes")) == 4e13);
	/* the sim agent reports no sizes: the job's is kept */
	T_EQ_STR(bfx_nz(json_string_value(json_object_get(o, "bytes_from"))),
		 "job");
	T_EXPECT(json_integer_value(json_object_get(o, "created_at")) > 0);
	T_EQ_STR(bfx_nz(json_string_value(json_object_get(o, "job"))), id);
	T_EQ_STR(bfx_nz(json_string_value(json_object_get(o, "stage"))),
		 "prep");
	T_EQ_STR(bfx_nz(json_string_value(
		     json_array_get(json_object_get(o, "tags"), 0))),
		 "t1");
	json_decref(o);
	replica_with_success(id, key, rev);

	/* A later job reading it goes where it is, though sim-a is
	 * cheaper. */
	T_OK(submit(consumer, id, sizeof(id)));
	wait_state(id, "placed|dispatched|running|succeeded", 10000, &job);
	if (!job)
		dump_logs();
	T_ASSERT(job != NULL);
	T_EQ_STR(bfx_nz(stage_site(job, 0)), "sim-b");
	json_decref(job);

	/* A restarted broker knows it from etcd. */
	T_EQ_INT(bfx_stop_checked(&F), 0);
	T_OK(bfx_spawn(&F));
	T_OK(submit(consumer, id, sizeof(id)));
	wait_state(id, "placed|dispatched|running|succeeded", 20000, &job);
	if (!job)
		dump_logs();
	T_ASSERT(job != NULL);
	T_EQ_STR(bfx_nz(stage_site(job, 0)), "sim-b");
	json_decref(job);
}

static const char quota_policy[] =
    "{\"version\": \"gpu-quota-1\", \"weights\": {\"compute\": 1},"
    " \"tenants\": {\"*\": {\"concurrent_stages\": 200},"
    " \"acme\": {\"gpus\": {\"a100\": 8}}}}";

static const char *gpu_job(int gpus, char *buf, size_t n)
{
	snprintf(buf, n,
		 "{\"name\": \"g%d\", \"constraints\": {\"sites\": "
		 "{\"allow\": [\"sim-a\", \"sim-b\"]}}, \"stages\": "
		 "[{\"name\": \"t\", \"kind\": \"training\", "
		 "\"resources\": {\"cpu\": 2, \"memory_mb\": 512, "
		 "\"gpu\": {\"count\": %d, \"models\": [\"a100\"]}}, "
		 "\"duration_s\": 100000, \"command\": [\"sleep\"]}]}",
		 gpus, gpus);
	return buf;
}

/* A tenant with 8 a100 of quota runs a 6-GPU stage; a 4-GPU job placed in
 * a later round waits for quota, and goes once the first is cancelled. */
static void test_gpu_quota_counts_running(void)
{
	struct bres r;
	char a[64], bid[64], body[1024], path[128];
	json_t *job = NULL;

	T_ASSERT(F.proc != NULL);
	T_OK(bfx_req(&F, "PUT", "/v1/policy", BFX_ADMIN, quota_policy, NULL,
		     &r));
	if (r.status != 200)
		printf("    %s\n", r.body ? r.body : "");
	T_EQ_INT(r.status, 200);
	bres_clear(&r);

	T_OK(submit(gpu_job(6, body, sizeof(body)), a, sizeof(a)));
	wait_state(a, "running", 20000, &job);
	if (!job)
		dump_logs();
	T_ASSERT(job != NULL);
	json_decref(job);

	T_OK(submit(gpu_job(4, body, sizeof(body)), bid, sizeof(bid)));
	/* Several rounds go by: it stays pending, for quota. */
	char *text = NULL;
	long long end = t_now_ms() + 10000;
	while (t_now_ms() < end) {
		wait_state(bid, "pending|placed|dispatched|running", 1000,
			   &job);
		free(text);
		text = job ? json_dumps(job, 0) : NULL;
		json_decref(job);
		if (text && strstr(text, "quota"))
			break;
		t_sleep_ms(100);
	}
	if (!text || !strstr(text, "quota"))
		printf("    %s\n", bfx_nz(text));
	T_EXPECT(text && strstr(text, "\"state\": \"pending\"") &&
		 strstr(text, "quota"));
	free(text);
	t_sleep_ms(1500);
	wait_state(bid, "pending", 1000, &job);
	T_EXPECT(job != NULL);
	json_decref(job);

	/* The 6 GPUs come back: it is placed. */
	snprintf(path, sizeof(path), "/v1/jobs/%s", a);
	T_OK(bfx_req(&F, "DELETE", path, BFX_ACME, NULL, NULL, &r));
	T_EQ_INT(r.status, 202);
	bres_clear(&r);
	wait_state(bid, "placed|dispatched|running", 20000, &job);
	if (!job)
		dump_logs();
	T_EXPECT(job != NULL);
	json_decref(job);
	snprintf(path, sizeof(path), "/v1/jobs/%s", bid);
	T_OK(bfx_req(&F, "DELETE", path, BFX_ACME, NULL, NULL, &r));
	bres_clear(&r);
}

static int is_str(const json_t *v, const char *s)
{
	return json_string_value(v) && strcmp(json_string_value(v), s) == 0;
}

static json_t *victim_stage(const char *id)
{
	struct bres r;
	char path[128];
	json_t *s = NULL;

	snprintf(path, sizeof(path), "/v1/jobs/%s", id);
	if (bfx_req(&F, "GET", path, BFX_ACME, NULL, NULL, &r) == 0 &&
	    r.status == 200)
		s = json_incref(
		    json_array_get(json_object_get(r.json, "stages"), 0));
	bres_clear(&r);
	return s;
}

/*
 * Two preemptible best-effort stages fill sim-a's GPUs; sim-a's agent is
 * killed so that nothing takes commands (its report stays fresh), an
 * online stage preempts one victim, and the broker is killed with the
 * cancel still in the link's queue. The restarted broker sends it again
 * when sim-a's restarted agent reports; the agent answers, and the stored
 * cancel goes away. (A stopped agent is not enough: a command already in
 * the socket's buffer would reach it anyway.)
 */
static void test_preempt_cancel_survives_restart(void)
{
	static const char *be =
	    "{\"name\": \"be-%d\", \"priority\": \"best-effort\","
	    " \"constraints\": {\"sites\": {\"allow\": [\"sim-a\"]}},"
	    " \"stages\": [{\"name\": \"crunch\", \"kind\": \"training\","
	    " \"preemptible\": true, \"resources\": {\"cpu\": 4,"
	    " \"memory_mb\": 4096, \"gpu\": {\"count\": 8, \"models\":"
	    " [\"a100\"]}}, \"duration_s\": 100000, \"command\": "
	    "[\"crunch\"]}]}";
	char body[1024], victims[2][64], online[64], path[700];
	char *pol = NULL;
	struct bres r;
	json_t *job = NULL;

	T_ASSERT(F.proc != NULL);
	/* Back to cost-first (online may preempt best-effort). */
	snprintf(path, sizeof(path), "%s/policy/examples/cost-first.json",
		 bfx_top());
	T_OK(t_read_file(path, &pol, NULL));
	T_OK(bfx_req(&F, "PUT", "/v1/policy", BFX_ADMIN, pol, NULL, &r));
	free(pol);
	T_EQ_INT(r.status, 200);
	bres_clear(&r);
	for (int i = 0; i < 2; i++) {
		snprintf(body, sizeof(body), be, i);
		T_OK(submit(body, victims[i], sizeof(victims[i])));
	}
	for (int i = 0; i < 2; i++) {
		wait_state(victims[i], "running", 20000, &job);
		if (!job)
			dump_logs();
		T_ASSERT(job != NULL);
		json_decref(job);
	}
	/* sim-a's next summary shows its GPUs taken */
	t_sleep_ms(1500);
	kill(t_proc_pid(agents[0]), SIGKILL);
	t_proc_stop(agents[0], 2000, NULL);
	agents[0] = NULL;
	T_OK(submit("{\"name\": \"serve\", \"priority\": \"online\","
		    " \"constraints\": {\"sites\": {\"allow\": "
		    "[\"sim-a\"]}}, \"stages\": [{\"name\": \"serve\", "
		    "\"kind\": \"inference\", \"resources\": {\"cpu\": 2, "
		    "\"memory_mb\": 2048, \"gpu\": {\"count\": 8, "
		    "\"models\": [\"a100\"]}}, \"duration_s\": 300, "
		    "\"command\": [\"serve\"]}]}",
		    online, sizeof(online)));
	int victim = -1;
	long long end = t_now_ms() + 15000;
	while (victim < 0 && t_now_ms() < end) {
		for (int i = 0; i < 2 && victim < 0; i++) {
			json_t *s = victim_stage(victims[i]);
			if (json_object_get(s, "preempted_by"))
				victim = i;
			json_decref(s);
		}
		t_sleep_ms(50);
	}
	if (victim < 0)
		dump_logs();
	T_ASSERT(victim >= 0);
	bfx_kill(&F, SIGKILL);

	/* The cancel was stored before it was queued. */
	struct mer_etcd_kv kv = {0};
	const char key[] = "/meridian/site-stale/sim-a";
	char uid[200];
	snprintf(uid, sizeof(uid), "%s", victims[victim]);
	T_OK(mer_etcd_get(F.cli, key, strlen(key), &kv, NULL));
	T_ASSERT(kv.value_len > 0);
	char *stored = strndup(kv.value, kv.value_len);
	mer_etcd_kv_clear(&kv);
	T_ASSERT(stored != NULL);
	int has = strstr(stored, uid) != NULL;
	if (!has)
		printf("    stored: %s\n", stored);
	free(stored);
	T_EXPECT(has);

	T_OK(bfx_spawn(&F));
	T_OK(respawn_agent(0));

	/* The agent answers the cancel sent again: the stored cancel is
	 * gone and the victim's first copy has ended. */
	int ended = 0, gone = 0;
	end = t_now_ms() + 30000;
	while (!(ended && gone) && t_now_ms() < end) {
		json_t *s = victim_stage(victims[victim]);
		json_t *st = json_array_get(json_object_get(s, "stale"), 0);
		ended = is_str(json_object_get(st, "state"), "ended");
		json_decref(s);
		gone = mer_etcd_get(F.cli, key, strlen(key), &kv, NULL) ==
		       MER_ENOTFOUND;
		mer_etcd_kv_clear(&kv);
		t_sleep_ms(100);
	}
	if (!(ended && gone))
		dump_logs();
	T_EXPECT(ended);
	T_EXPECT(gone);
	/* Out of the way. */
	for (int i = 0; i < 2; i++) {
		snprintf(path, sizeof(path), "/v1/jobs/%s", victims[i]);
		T_OK(bfx_req(&F, "DELETE", path, BFX_ACME, NULL, NULL, &r));
		bres_clear(&r);
	}
	snprintf(path, sizeof(path), "/v1/jobs/%s", online);
	T_OK(bfx_req(&F, "DELETE", path, BFX_ACME, NULL, NULL, &r));
	bres_clear(&r);
}

/* Revoking sim-b deletes the replicas its stages made (corpus-7, from
 * the first case) in the txn that marks it revoked; another site's, even
 * one whose name starts the same, stay. */
static void test_revoked_site_replicas_gone(void)
{
	const char pre[] = "/meridian/replicas/sim-b/";
	const char other[] = "/meridian/replicas/sim-b2/kept";
	const char mine[] = "/meridian/replicas/sim-b/corpus-7";
	struct mer_etcd_range rg = {0};
	struct mer_etcd_kv kv;
	struct bres r;

	T_ASSERT(F.proc != NULL);
	T_OK(mer_etcd_get(F.cli, mine, strlen(mine), &kv, NULL));
	mer_etcd_kv_clear(&kv);
	T_OK(mer_etcd_put(F.cli, other, strlen(other), "{}", 2, 0, NULL));

	T_OK(bfx_req(&F, "DELETE", "/v1/sites/sim-b", BFX_ADMIN, NULL, NULL,
		     &r));
	T_EQ_INT(r.status, 200);
	bres_clear(&r);

	T_OK(mer_etcd_range_prefix(F.cli, pre, strlen(pre), NULL, 0, 0, 0, 0,
				   &rg, NULL));
	T_EQ_INT(rg.n, 0);
	mer_etcd_range_clear(&rg);
	T_OK(mer_etcd_get(F.cli, other, strlen(other), &kv, NULL));
	mer_etcd_kv_clear(&kv);
	mer_etcd_delete(F.cli, other, strlen(other), NULL, NULL);

	/* Gone in the very txn that says revoked. */
	const char site[] = "/meridian/sites/sim-b";
	T_OK(mer_etcd_get(F.cli, site, strlen(site), &kv, NULL));
	int64_t rev = kv.mod_revision;
	json_t *o = json_loadb(kv.value, kv.value_len, 0, NULL);
	mer_etcd_kv_clear(&kv);
	T_EXPECT(json_is_true(json_object_get(o, "revoked")));
	json_decref(o);
	T_OK(bfx_get_at(&F, mine, rev - 1, &kv));
	mer_etcd_kv_clear(&kv);
	T_EQ_INT(bfx_get_at(&F, mine, rev, &kv), MER_ENOTFOUND);
}

/*
 * sim-b, revoked above, joins again under its name (a new token and key,
 * as an admin would let it back): it is placed on again (its status
 * record's revoked mark goes with the join) and shows none of the outputs
 * it had before the revoke, which the broker's memory kept before: a job
 * reading corpus-7, found nowhere now, waits (input_missing) instead of
 * being drawn to sim-b.
 */
static void test_rejoined_site_without_old_outputs(void)
{
	char path[600], id[64];
	json_t *job = NULL;
	struct bres r;

	T_ASSERT(F.proc != NULL);
	t_proc_stop(agents[1], 5000, NULL);
	agents[1] = NULL;
	/* a new key (a key that joined once never joins again) and state */
	snprintf(path, sizeof(path), "%s/sim-b.key", F.dir);
	unlink(path);
	snprintf(path, sizeof(path), "%s/sim-b.state", F.dir);
	unlink(path);
	int rv = start_agent(1);
	if (rv)
		dump_logs();
	T_OK(rv);
	long long end = t_now_ms() + 20000;
	int back = 0;
	while (t_now_ms() < end && !back) {
		if (bfx_req(&F, "GET", "/v1/sites/sim-b", BFX_ADMIN, NULL, NULL,
			    &r) == 0)
			back =
			    r.status == 200 &&
			    !json_is_true(json_object_get(r.json, "revoked"));
		bres_clear(&r);
		if (!back)
			t_sleep_ms(100);
	}
	T_ASSERT(back);

	/* Placed on again: a job pinned to sim-b runs there. */
	T_OK(submit("{\"name\": \"pinned\", \"constraints\": {\"sites\": "
		    "{\"allow\": [\"sim-b\"]}}, \"stages\": [{\"name\": "
		    "\"w\", \"kind\": \"generic\", \"resources\": "
		    "{\"cpu\": 1, \"memory_mb\": 256}, \"duration_s\": 10}]}",
		    id, sizeof(id)));
	T_ASSERT(succeeded_on(id, "sim-b") == 0);

	/* Its old output is gone from the snapshots too. */
	T_OK(submit(consumer, id, sizeof(id)));
	char *text = NULL;
	end = t_now_ms() + 10000;
	while (t_now_ms() < end) {
		wait_state(id, "pending|placed|dispatched|running|succeeded",
			   1000, &job);
		free(text);
		text = job ? json_dumps(job, 0) : NULL;
		int pending = job && strcmp(bfx_nz(json_string_value(
						json_object_get(job, "state"))),
					    "pending") == 0;
		json_decref(job);
		if (!pending || (text && strstr(text, "input_missing")))
			break;
		t_sleep_ms(100);
	}
	expect_input_missing(text);
	snprintf(path, sizeof(path), "/v1/jobs/%s", id);
	T_OK(bfx_req(&F, "DELETE", path, BFX_ACME, NULL, NULL, &r));
	bres_clear(&r);
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
    {"output_becomes_replica", test_output_becomes_replica},
    {"gpu_quota_counts_running", test_gpu_quota_counts_running},
    {"preempt_cancel_survives_restart", test_preempt_cancel_survives_restart},
    {"revoked_site_replicas_gone", test_revoked_site_replicas_gone},
    {"rejoined_site_without_old_outputs",
     test_rejoined_site_without_old_outputs},
    {"clean_exit", test_clean_exit},
};

T_MAIN("broker_live", cases)
