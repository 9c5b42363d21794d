/*
 * Several brokers on one etcd (docs/STATE.md "Leader"): exactly one leads;
 * a follower answers reads and redirects writes (307) to the leader; a
 * leader killed with SIGKILL mid-job is replaced within about one lease
 * TTL and the job (three stages on real sim agents that rotate between
 * the brokers' link addresses) completes with no stage launched twice and
 * no acknowledged job lost; a leader paused past its lease (SIGSTOP, then
 * SIGCONT) is fenced and steps down to follower.
 */
#include "tests/integration/broker_fixture.h"

#include <signal.h>
#include <sodium.h>

#include "common/err.h"
#include "tests/harness.h"

/* The lease TTL the tests run with: failover within about this. */
#define TTL_MS 2000
#define EXTRA                                                                  \
	"\"placement\": {\"interval\": \"300ms\"},"                            \
	" \"leader\": {\"lease_ttl\": \"2s\"},"

static struct bfx A, B;
static struct t_proc *agents[2];
static const char *site_names[2] = {"sim-a", "sim-b"};
static const char *site_regions[2] = {"eu-west-1", "us-east-1"};

static void teardown(void)
{
	for (int i = 0; i < 2; i++) {
		t_proc_stop(agents[i], 1000, NULL);
		agents[i] = NULL;
	}
	/* A paused broker must be woken to be stopped. */
	if (A.proc)
		kill(t_proc_pid(A.proc), SIGCONT);
	if (B.proc)
		kill(t_proc_pid(B.proc), SIGCONT);
	if (B.etcd)
		bfx_free(&B);
	if (A.etcd)
		bfx_free(&A);
}

static void dump_logs(void)
{
	char path[700], *log = NULL;
	const struct bfx *fs[2] = {&A, &B};
	const char *names[] = {"broker", "sim-a", "sim-b"};

	for (int k = 0; k < 2; k++)
		for (int i = 0; i < 3; i++) {
			if (!fs[k]->dir)
				continue;
			snprintf(path, sizeof(path), "%s/%s.log", fs[k]->dir,
				 names[i]);
			if (t_read_file(path, &log, NULL) == 0)
				fprintf(stderr, "--- %c %s ---\n%s\n", 'A' + k,
					names[i], log);
			free(log);
			log = NULL;
		}
}

/* "leader", "follower", or "" when /readyz does not answer 200. */
static void role_of(const struct bfx *f, char *out, size_t n)
{
	struct bres r;

	out[0] = 0;
	if (bfx_req(f, "GET", "/readyz", NULL, NULL, NULL, &r) == 0 &&
	    r.status == 200)
		snprintf(out, n, "%s", bfx_nz(bres_str(&r, "role")));
	bres_clear(&r);
}

static int wait_role(const struct bfx *f, const char *want, int ms)
{
	char role[32];
	long long end = t_now_ms() + ms;

	while (t_now_ms() < end) {
		role_of(f, role, sizeof(role));
		if (strcmp(role, want) == 0)
			return 0;
		t_sleep_ms(50);
	}
	return MER_ETIMEDOUT;
}

/* The leader key's value as etcd has it (new reference) or NULL. */
static json_t *leader_key(void)
{
	struct mer_etcd_kv kv = {0};
	json_t *v = NULL;

	if (mer_etcd_get(A.cli, "/meridian/leader", 16, &kv, NULL) == 0)
		v = json_loadb(kv.value, kv.value_len, 0, NULL);
	mer_etcd_kv_clear(&kv);
	return v;
}

static int start_pair(int with_link)
{
	int rv;

	if (sodium_init() < 0)
		return MER_ECRYPTO;
	if ((rv = bfx_start_opts(&A, EXTRA, with_link)))
		return rv;
	/* A elects itself before B starts: B must follow. */
	if ((rv = wait_role(&A, "leader", 10000)))
		return rv;
	return bfx_start_peer(&B, &A, EXTRA, with_link);
}

static void stop_pair(void)
{
	teardown();
	memset(&A, 0, sizeof(A));
	memset(&B, 0, sizeof(B));
}

static const char *job_body =
    "{\"name\": \"lead\", \"constraints\": {\"sites\": {\"allow\": "
    "[\"sim-a\", \"sim-b\"]}}, \"stages\": ["
    "{\"name\": \"prep\", \"kind\": \"data-prep\", \"resources\": "
    "{\"cpu\": 4, \"memory_mb\": 4096}, \"duration_s\": 150, "
    "\"command\": [\"prep\"]},"
    "{\"name\": \"train\", \"kind\": \"training\", \"after\": "
    "[\"prep\"], \"resources\": {\"cpu\": 8, \"memory_mb\": 8192, "
    "\"gpu\": {\"count\": 2, \"models\": [\"a100\"]}}, "
    "\"duration_s\": 150, \"command\": [\"train\"]},"
    "{\"name\": \"serve\", \"kind\": \"inference\", \"after\": "
    "[\"train\"], \"resources\": {\"cpu\": 2, \"memory_mb\": 2048}, "
    "\"duration_s\": 150, \"command\": [\"serve\"]}]}";

static void test_one_leads_follower_redirects(void)
{
	long st;
	struct bres r;
	char role[32], loc[1024], id[64], path[128];

	curl_global_init(CURL_GLOBAL_DEFAULT);
	atexit(teardown);
	int rv = start_pair(0);
	if (rv)
		dump_logs();
	T_OK(rv);
	role_of(&A, role, sizeof(role));
	T_EQ_STR(role, "leader");
	role_of(&B, role, sizeof(role));
	T_EQ_STR(role, "follower");
	json_t *lk = leader_key();
	T_ASSERT(lk != NULL);
	T_EQ_STR(json_string_value(json_object_get(lk, "rest")), A.base);
	json_decref(lk);

	/* A write to the follower: 307 to the leader, same path. */
	T_OK(bfx_req(&B, "POST", "/v1/jobs?x=a%20b", BFX_ACME, job_body, NULL,
		     &r));
	T_EQ_INT(r.status, 307);
	T_EQ_STR(bfx_nz(bres_str(&r, "error")), "not_leader");
	T_EQ_STR(bfx_nz(bres_str(&r, "leader")), A.base);
	snprintf(loc, sizeof(loc), "Location: %s/v1/jobs?x=a%%20b", A.base);
	T_CONTAINS(r.hdrs, loc);
	bres_clear(&r);
	T_OK(bfx_req(&B, "DELETE", "/v1/jobs/j00000000000000000000", BFX_ACME,
		     NULL, NULL, &r));
	T_EQ_INT(r.status, 307);
	bres_clear(&r);
	T_OK(bfx_req(&B, "PUT", "/v1/policy", BFX_ADMIN, "{}", NULL, &r));
	T_EQ_INT(r.status, 307);
	bres_clear(&r);

	/* Sent to the leader it is stored; the follower reads it. */
	T_OK(bfx_submit(&A, BFX_ACME, job_body, &st, id, sizeof(id)));
	T_EQ_INT(st, 201);
	snprintf(path, sizeof(path), "/v1/jobs/%s", id);
	T_OK(bfx_req(&B, "GET", path, BFX_ACME, NULL, NULL, &r));
	T_EQ_INT(r.status, 200);
	T_EQ_STR(bfx_nz(bres_str(&r, "id")), id);
	bres_clear(&r);
	T_OK(bfx_req(&B, "GET", "/v1/jobs", BFX_ACME, NULL, NULL, &r));
	T_EQ_INT(r.status, 200);
	bres_clear(&r);
	/* Dry-runs change nothing: followers answer them. */
	T_OK(bfx_req(&B, "POST", "/v1/placements:dry-run", BFX_ACME, job_body,
		     NULL, &r));
	T_EQ_INT(r.status, 200);
	bres_clear(&r);
	T_OK(bfx_req(&B, "GET", "/metrics", NULL, NULL, NULL, &r));
	T_CONTAINS(bfx_nz(r.body), "meridian_leader 0");
	bres_clear(&r);
	T_OK(bfx_req(&A, "GET", "/metrics", NULL, NULL, NULL, &r));
	T_CONTAINS(bfx_nz(r.body), "meridian_leader 1");
	bres_clear(&r);

	/* meridianctl follows the follower's 307 to the leader once. */
	char bin[600], file[600], log[600], env_url[128], env_tok[128];
	char *out = NULL;
	const char *dir = getenv("MERIDIAN_BIN");
	snprintf(bin, sizeof(bin), "%s/meridianctl", dir && *dir ? dir : "bin");
	snprintf(file, sizeof(file), "%s/job.json", A.dir);
	snprintf(log, sizeof(log), "%s/ctl.log", A.dir);
	snprintf(env_url, sizeof(env_url), "MERIDIAN_URL=%s", B.base);
	snprintf(env_tok, sizeof(env_tok), "MERIDIAN_TOKEN=%s", BFX_ACME);
	T_OK(bfx_write(file, job_body));
	char *argv[] = {bin, "submit", file, "-o", "json", NULL};
	char *envp[] = {env_url, env_tok, NULL};
	struct t_proc *ctl = NULL;
	int status = -1;
	T_OK(t_proc_spawn(bin, argv, envp, log, &ctl));
	for (int k = 0; k < 200 && !t_proc_exited(ctl, &status); k++)
		t_sleep_ms(50);
	t_proc_stop(ctl, 1000, NULL);
	T_OK(t_read_file(log, &out, NULL));
	T_EXPECT(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	T_CONTAINS(bfx_nz(out), "\"id\"");
	free(out);

	/* SIGTERM resigns: B leads at once, not after the lease TTL. */
	long long t0 = t_now_ms();
	T_EQ_INT(bfx_stop_checked(&A), 0);
	T_OK(wait_role(&B, "leader", TTL_MS));
	T_EXPECT(t_now_ms() - t0 < TTL_MS);
	T_OK(bfx_req(&B, "POST", "/v1/jobs", BFX_ACME, job_body, NULL, &r));
	T_EQ_INT(r.status, 201);
	bres_clear(&r);
	stop_pair();
}

static void test_sigkill_leader_mid_job(void)
{
	long st;
	struct bres r;
	char path[128], id[64], ids[20][64];
	int rv;

	T_OK(start_pair(1));
	/* Agents know both brokers' link addresses. */
	snprintf(A.agent_brokers, sizeof(A.agent_brokers), "%s,%s", A.link,
		 B.link);
	for (int i = 0; i < 2; i++) {
		const struct bfx_site s = {site_names[i], site_regions[i],
					   i ? "2.5" : "2.0", "0.01"};
		rv = bfx_agent_join(&A, &s, &agents[i]);
		if (rv)
			dump_logs();
		T_OK(rv);
	}
	int reported = bfx_sites_reported(&A, "sim-a", "sim-b", 20000);
	T_ASSERT(reported);

	T_OK(bfx_submit(&A, BFX_ACME, job_body, &st, id, sizeof(id)));
	T_EQ_INT(st, 201);
	/* More acknowledged jobs, none of which may be lost. */
	for (int i = 0; i < 20; i++) {
		T_OK(bfx_req(&A, "POST", "/v1/jobs", BFX_BETA,
			     "{\"name\": \"small\", \"stages\": [{\"name\": "
			     "\"s\", \"resources\": {\"cpu\": 1}, "
			     "\"duration_s\": 10}]}",
			     NULL, &r));
		T_EQ_INT(r.status, 201);
		snprintf(ids[i], sizeof(ids[i]), "%s",
			 bfx_nz(bres_str(&r, "id")));
		bres_clear(&r);
	}
	/* Kill the leader once the first stage runs. */
	snprintf(path, sizeof(path), "/v1/jobs/%s", id);
	int running = 0;
	long long end = t_now_ms() + 20000;
	while (t_now_ms() < end && !running) {
		T_OK(bfx_req(&A, "GET", path, BFX_ACME, NULL, NULL, &r));
		json_t *st0 =
		    json_array_get(json_object_get(r.json, "stages"), 0);
		const char *s =
		    json_string_value(json_object_get(st0, "state"));
		running = s && (strcmp(s, "running") == 0 ||
				strcmp(s, "succeeded") == 0);
		bres_clear(&r);
		if (!running)
			t_sleep_ms(50);
	}
	T_ASSERT(running);
	long long t0 = t_now_ms();
	bfx_kill(&A, SIGKILL);
	rv = wait_role(&B, "leader", TTL_MS + 5000);
	if (rv)
		dump_logs();
	T_OK(rv);
	long long took = t_now_ms() - t0;
	fprintf(stderr, "failover took %lld ms (lease TTL %d ms)\n", took,
		TTL_MS);
	T_EXPECT(took < TTL_MS + 3000);

	json_t *job = NULL;
	T_OK(bfx_wait_ended(&B, path, BFX_ACME, 90000, &job, NULL));
	if (!job ||
	    strcmp(bfx_nz(json_string_value(json_object_get(job, "state"))),
		   "succeeded") != 0)
		dump_logs();
	T_ASSERT(job != NULL);
	T_EQ_STR(json_string_value(json_object_get(job, "state")), "succeeded");
	/* One attempt per stage: nothing was launched twice. */
	size_t i;
	json_t *s;
	json_array_foreach (json_object_get(job, "stages"), i, s) {
		T_EQ_STR(json_string_value(json_object_get(s, "state")),
			 "succeeded");
		T_EQ_INT(json_integer_value(json_object_get(s, "attempts")), 1);
	}
	json_decref(job);
	for (int k = 0; k < 20; k++) {
		snprintf(path, sizeof(path), "/v1/jobs/%.63s", ids[k]);
		T_OK(bfx_req(&B, "GET", path, BFX_BETA, NULL, NULL, &r));
		T_EQ_INT(r.status, 200);
		bres_clear(&r);
	}
	stop_pair();
}

static void test_paused_leader_is_fenced(void)
{
	struct bres r;
	char role[32];

	T_OK(start_pair(0));
	pid_t pa = t_proc_pid(A.proc);
	kill(pa, SIGSTOP);
	/* Past its lease: B is elected. */
	int rv = wait_role(&B, "leader", TTL_MS + 5000);
	if (rv) {
		kill(pa, SIGCONT);
		dump_logs();
	}
	T_OK(rv);
	json_t *lk = leader_key();
	T_EQ_STR(json_string_value(json_object_get(lk, "rest")), B.base);
	json_decref(lk);
	T_OK(bfx_req(&B, "POST", "/v1/jobs", BFX_ACME, job_body, NULL, &r));
	T_EQ_INT(r.status, 201);
	bres_clear(&r);

	/* A wakes up believing it leads; its fence and lease say not. */
	kill(pa, SIGCONT);
	rv = wait_role(&A, "follower", 10000);
	if (rv)
		dump_logs();
	T_OK(rv);
	T_OK(bfx_req(&A, "POST", "/v1/jobs", BFX_ACME, job_body, NULL, &r));
	T_EQ_INT(r.status, 307);
	T_EQ_STR(bfx_nz(bres_str(&r, "leader")), B.base);
	bres_clear(&r);
	/* etcd still names B, at the same epoch: A wrote nothing over it. */
	lk = leader_key();
	T_EQ_STR(json_string_value(json_object_get(lk, "rest")), B.base);
	json_decref(lk);
	role_of(&B, role, sizeof(role));
	T_EQ_STR(role, "leader");
	T_OK(bfx_req(&A, "GET", "/metrics", NULL, NULL, NULL, &r));
	T_CONTAINS(bfx_nz(r.body), "meridian_leader 0");
	bres_clear(&r);
	stop_pair();
}

static const struct t_case cases[] = {
    {"one_leads_follower_redirects", test_one_leads_follower_redirects},
    {"sigkill_leader_mid_job", test_sigkill_leader_mid_job},
    {"paused_leader_is_fenced", test_paused_leader_is_fenced},
};

T_MAIN("broker_leader", cases)
