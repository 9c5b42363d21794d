/*
 * The broker's REST API end to end: a real etcd, a real bin/meridian-broker
 * process and libcurl. Covers auth and roles, submission (stored in etcd
 * before 201), validation errors naming the field (cases in
 * tests/fixtures/broker/bad-*.json), 413, idempotency, listing with
 * filters and cursors, cancel, placement and dry-run against the fixture
 * federation, sites drain/undrain/revoke, tokens, policy versions and
 * reloads, and /metrics.
 */
#include "tests/integration/broker_fixture.h"

#include <ctype.h>
#include <dirent.h>
#include <time.h>
#include <sodium.h>
#include <unistd.h>

#include "common/err.h"
#include "common/log.h"
#include "tests/harness.h"

static struct bfx F;

static int started, start_failed;

static void teardown(void)
{
	if (started)
		bfx_free(&F);
}

static int setup(void)
{
	if (started)
		return 0;
	if (start_failed)
		return MER_EIO;
	if (sodium_init() < 0)
		return MER_EIO;
	curl_global_init(CURL_GLOBAL_DEFAULT);
	if (bfx_start(&F,
		      "\"http\": {\"max_body\": \"64KiB\"},"
		      " \"placement\": {\"interval\": \"200ms\"},"
		      " \"jobs\": {\"idempotency_retention\": \"5s\"},") != 0) {
		start_failed = 1;
		bfx_free(&F);
		return MER_EIO;
	}
	started = 1;
	atexit(teardown);
	return 0;
}

#define SETUP()                                                                \
	do {                                                                   \
		if (setup() != 0) {                                            \
			t_fail(__FILE__, __LINE__, "broker did not start");    \
			return;                                                \
		}                                                              \
	} while (0)

/* Training beside a 50 TB corpus: the engine must pick bj-a800. */
static const char *gravity_job =
    "{\"name\": \"gravity\", \"priority\": \"batch\", \"stages\": [{"
    "\"name\": \"train\", \"kind\": \"training\", \"resources\": {"
    "\"cpu\": 8, \"memory_mb\": 65536, \"gpu\": {\"count\": 8, "
    "\"models\": [\"a800\", \"a100\", \"h800\"]}}, "
    "\"inputs\": [{\"name\": \"web-corpus\"}], \"duration_s\": 36000}]}";

static const char *three_stage_job =
    "{\"name\": \"pipe\", \"stages\": ["
    "{\"name\": \"prep\", \"kind\": \"data-prep\", \"resources\": "
    "{\"cpu\": 4, \"memory_mb\": 8192}, \"duration_s\": 600},"
    "{\"name\": \"train\", \"kind\": \"training\", \"after\": [\"prep\"], "
    "\"resources\": {\"cpu\": 8, \"memory_mb\": 65536, \"gpu\": "
    "{\"count\": 2, \"models\": [\"a100\", \"a800\", \"h800\"]}}, "
    "\"duration_s\": 3600},"
    "{\"name\": \"serve\", \"kind\": \"inference\", \"after\": "
    "[\"train\"], \"resources\": {\"cpu\": 2, \"memory_mb\": 4096}, "
    "\"duration_s\": 600}]}";

static json_t *get_job(const char *id, const char *token, long *status)
{
	struct bres r;
	char path[128];
	json_t *j = NULL;

	snprintf(path, sizeof(path), "/v1/jobs/%s", id);
	if (bfx_req(&F, "GET", path, token, NULL, NULL, &r) == 0) {
		*status = r.status;
		j = json_incref(r.json);
	}
	bres_clear(&r);
	return j;
}

/* Waits until the job reaches state (or 10 s pass); returns the record. */
static json_t *wait_state(const char *id, const char *state)
{
	long long end = t_now_ms() + 10000;
	long st;

	while (t_now_ms() < end) {
		json_t *j = get_job(id, BFX_ADMIN, &st);
		const char *s = json_string_value(json_object_get(j, "state"));
		if (s && strcmp(s, state) == 0)
			return j;
		json_decref(j);
		t_sleep_ms(50);
	}
	return NULL;
}

static void test_health(void)
{
	struct bres r;

	SETUP();
	T_OK(bfx_req(&F, "GET", "/healthz", NULL, NULL, NULL, &r));
	T_EQ_INT(r.status, 200);
	bres_clear(&r);
	T_OK(bfx_req(&F, "GET", "/readyz", NULL, NULL, NULL, &r));
	T_EQ_INT(r.status, 200);
	T_EQ_STR(bres_str(&r, "status"), "ready");
	bres_clear(&r);
}

static void test_auth(void)
{
	long st;
	struct bres r;
	char path[128], id[64];

	SETUP();
	T_OK(bfx_req(&F, "GET", "/v1/jobs", NULL, NULL, NULL, &r));
	T_EQ_INT(r.status, 401);
	T_EQ_STR(bres_str(&r, "error"), "unauthorized");
	T_CONTAINS(r.hdrs, "WWW-Authenticate: Bearer");
	bres_clear(&r);
	T_OK(bfx_req(&F, "GET", "/v1/jobs", "not-a-known-token-at-all", NULL,
		     NULL, &r));
	T_EQ_INT(r.status, 401);
	bres_clear(&r);
	/* A tenant may not create join tokens, drain or change policy. */
	T_OK(bfx_req(&F, "POST", "/v1/tokens", BFX_ACME,
		     "{\"site\": \"x1\", \"region\": \"r\"}", NULL, &r));
	T_EQ_INT(r.status, 403);
	T_EQ_STR(bres_str(&r, "error"), "forbidden");
	bres_clear(&r);
	T_OK(bfx_req(&F, "POST", "/v1/sites/bj-a800:drain", BFX_ACME, NULL,
		     NULL, &r));
	T_EQ_INT(r.status, 403);
	bres_clear(&r);
	T_OK(bfx_req(&F, "PUT", "/v1/policy", BFX_ACME, "{}", NULL, &r));
	T_EQ_INT(r.status, 403);
	bres_clear(&r);
	/* Submitting as another tenant is refused, naming the field. */
	T_OK(bfx_req(&F, "POST", "/v1/jobs", BFX_ACME,
		     "{\"name\": \"x\", \"tenant\": \"beta\", \"stages\": []}",
		     NULL, &r));
	T_EQ_INT(r.status, 403);
	T_EQ_STR(bres_str(&r, "field"), "tenant");
	bres_clear(&r);
	/* acme's job is invisible to beta (404, not 403) but not to ops. */
	T_OK(bfx_submit(&F, BFX_ACME, gravity_job, &st, id, sizeof(id)));
	T_EQ_INT(st, 201);
	snprintf(path, sizeof(path), "/v1/jobs/%s", id);
	T_OK(bfx_req(&F, "GET", path, BFX_BETA, NULL, NULL, &r));
	T_EQ_INT(r.status, 404);
	bres_clear(&r);
	T_OK(bfx_req(&F, "DELETE", path, BFX_BETA, NULL, NULL, &r));
	T_EQ_INT(r.status, 404);
	bres_clear(&r);
	snprintf(path, sizeof(path), "/v1/jobs/%s/placement", id);
	T_OK(bfx_req(&F, "GET", path, BFX_BETA, NULL, NULL, &r));
	T_EQ_INT(r.status, 404);
	bres_clear(&r);
	snprintf(path, sizeof(path), "/v1/jobs/%s", id);
	T_OK(bfx_req(&F, "GET", path, BFX_ADMIN, NULL, NULL, &r));
	T_EQ_INT(r.status, 200);
	T_EQ_STR(bres_str(&r, "tenant"), "acme");
	bres_clear(&r);
	T_OK(bfx_req(&F, "GET", "/v1/jobs?tenant=acme", BFX_BETA, NULL, NULL,
		     &r));
	T_EQ_INT(r.status, 403);
	bres_clear(&r);
}

static void test_submit_stored_and_placed(void)
{
	struct bres r;
	char key[128], id[64];
	struct mer_etcd_kv kv = {0};

	SETUP();
	T_OK(bfx_req(&F, "POST", "/v1/jobs", BFX_ACME, gravity_job, NULL, &r));
	T_EQ_INT(r.status, 201);
	T_EQ_STR(bres_str(&r, "state"), "pending");
	T_EQ_STR(bres_str(&r, "tenant"), "acme");
	T_ASSERT(bres_str(&r, "id") != NULL);
	snprintf(id, sizeof(id), "%s", bres_str(&r, "id"));
	T_CONTAINS(r.hdrs, "Location: /v1/jobs/");
	bres_clear(&r);
	/* 201 means etcd has it. */
	snprintf(key, sizeof(key), "/meridian/jobs/%s", id);
	T_OK(mer_etcd_get(F.cli, key, strlen(key), &kv, NULL));
	T_CONTAINS(kv.value, "\"gravity\"");
	mer_etcd_kv_clear(&kv);

	json_t *j = wait_state(id, "placed");
	T_ASSERT(j != NULL);
	json_t *st = json_array_get(json_object_get(j, "stages"), 0);
	T_EQ_STR(json_string_value(json_object_get(st, "site")), "bj-a800");
	T_EQ_STR(json_string_value(json_object_get(st, "state")), "placed");
	T_EXPECT(json_object_get(j, "placement") == NULL);
	json_decref(j);

	char path[128];
	snprintf(path, sizeof(path), "/v1/jobs/%s/placement", id);
	T_OK(bfx_req(&F, "GET", path, BFX_ACME, NULL, NULL, &r));
	T_EQ_INT(r.status, 200);
	T_CONTAINS(r.body, "\"bj-a800\"");
	T_CONTAINS(r.body, "\"policy_version\"");
	bres_clear(&r);
}

static void test_three_stages_placed_in_order(void)
{
	long st;
	char id[64];

	SETUP();
	T_OK(bfx_submit(&F, BFX_ACME, three_stage_job, &st, id, sizeof(id)));
	T_EQ_INT(st, 201);
	json_t *j = wait_state(id, "placed");
	T_ASSERT(j != NULL);
	json_t *stages = json_object_get(j, "stages");
	T_EQ_INT(json_array_size(stages), 3);
	const char *names[] = {"prep", "train", "serve"};
	for (size_t i = 0; i < 3; i++) {
		json_t *s = json_array_get(stages, i);
		T_EQ_STR(json_string_value(json_object_get(s, "name")),
			 names[i]);
		T_EQ_STR(json_string_value(json_object_get(s, "state")),
			 "placed");
		T_EXPECT(json_is_string(json_object_get(s, "site")));
	}
	T_EQ_STR(json_string_value(json_array_get(
		     json_object_get(json_array_get(stages, 1), "after"), 0)),
		 "prep");
	json_decref(j);
}

/* Each fixture: {"job": {...}, "field": "...", "contains": "..."}. */
static void test_bad_fields(void)
{
	char dir[600];
	struct dirent *de;
	DIR *d;
	int n = 0;

	SETUP();
	snprintf(dir, sizeof(dir), "%s/tests/fixtures/broker", bfx_top());
	d = opendir(dir);
	T_ASSERT(d != NULL);
	while ((de = readdir(d))) {
		char path[900];
		json_t *fx, *job;
		struct bres r;

		if (strncmp(de->d_name, "bad-", 4) != 0)
			continue;
		snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
		fx = json_load_file(path, 0, NULL);
		T_ASSERT(fx != NULL);
		job = json_object_get(fx, "job");
		char *body = json_is_string(job)
				 ? strdup(json_string_value(job))
				 : json_dumps(job, 0);
		T_OK(bfx_req(&F, "POST", "/v1/jobs", BFX_ACME, body, NULL, &r));
		if (r.status != 400 || !bres_str(&r, "field") ||
		    strcmp(bres_str(&r, "field"),
			   bfx_nz(json_string_value(
			       json_object_get(fx, "field")))) != 0 ||
		    !strstr(r.body, bfx_nz(json_string_value(
					json_object_get(fx, "contains")))))
			t_fail(__FILE__, __LINE__, "%s: got %ld %s", de->d_name,
			       r.status, r.body ? r.body : "");
		n++;
		bres_clear(&r);
		free(body);
		json_decref(fx);
	}
	closedir(d);
	T_EXPECT(n >= 8);
}

/* Requests no site of the federation could ever hold are refused at
 * submission (by allocatable capacity), naming the field. */
static void test_never_fits(void)
{
	struct bres r;

	SETUP();
	T_OK(bfx_req(&F, "POST", "/v1/jobs", BFX_ACME,
		     "{\"name\": \"huge\", \"stages\": [{\"name\": \"t\", "
		     "\"kind\": \"training\", \"resources\": {\"cpu\": 8, "
		     "\"memory_mb\": 1024, \"gpu\": {\"count\": 4, \"models\": "
		     "[\"b200\"]}}}]}",
		     NULL, &r));
	T_EQ_INT(r.status, 400);
	T_CONTAINS(bres_str(&r, "field"), "stages[0].resources.gpu");
	bres_clear(&r);
	T_OK(bfx_req(&F, "POST", "/v1/jobs", BFX_ACME,
		     "{\"name\": \"huge\", \"stages\": [{\"name\": \"t\", "
		     "\"kind\": \"training\", \"resources\": {\"cpu\": 8, "
		     "\"memory_mb\": 1024, \"gpu\": {\"count\": 4096, "
		     "\"models\": [\"a800\"]}}}]}",
		     NULL, &r));
	T_EQ_INT(r.status, 400);
	T_CONTAINS(bres_str(&r, "field"), "stages[0].resources.gpu");
	bres_clear(&r);
}

static void test_too_large(void)
{
	struct bres r;
	size_t n = 100 * 1024;
	char *big = malloc(n + 64);

	SETUP();
	T_ASSERT(big != NULL);
	snprintf(big, n + 64, "{\"name\": \"");
	memset(big + strlen(big), 'x', n);
	snprintf(big + 10 + n, 54, "\", \"stages\": []}");
	T_OK(bfx_req(&F, "POST", "/v1/jobs", BFX_ACME, big, NULL, &r));
	T_EQ_INT(r.status, 413);
	bres_clear(&r);
	free(big);
	/* The server still answers. */
	T_OK(bfx_req(&F, "GET", "/healthz", NULL, NULL, NULL, &r));
	T_EQ_INT(r.status, 200);
	bres_clear(&r);
}

static void test_idempotency(void)
{
	struct bres r1, r2, r3;
	char key[256], val[256], hx[65];
	unsigned char h[32];

	SETUP();
	T_OK(
	    bfx_req(&F, "POST", "/v1/jobs", BFX_ACME, gravity_job, "k-1", &r1));
	T_EQ_INT(r1.status, 201);
	T_OK(
	    bfx_req(&F, "POST", "/v1/jobs", BFX_ACME, gravity_job, "k-1", &r2));
	T_EQ_INT(r2.status, 201);
	T_EQ_STR(bres_str(&r2, "id"), bres_str(&r1, "id"));
	T_CONTAINS(r2.hdrs, "Idempotent-Replayed: true");
	/* Same key, another body. */
	T_OK(bfx_req(&F, "POST", "/v1/jobs", BFX_ACME, three_stage_job, "k-1",
		     &r3));
	T_EQ_INT(r3.status, 422);
	T_EQ_STR(bres_str(&r3, "error"), "idempotency_mismatch");
	bres_clear(&r3);
	/* Keys are per tenant: beta's k-1 is a new job. */
	T_OK(
	    bfx_req(&F, "POST", "/v1/jobs", BFX_BETA, gravity_job, "k-1", &r3));
	T_EQ_INT(r3.status, 201);
	T_EXPECT(strcmp(bfx_nz(bres_str(&r3, "id")),
			bfx_nz(bres_str(&r1, "id"))) != 0);
	bres_clear(&r3);
	bres_clear(&r1);
	bres_clear(&r2);

	/* A first request still in progress (its record reserved, no job
	 * yet), as another broker would leave it mid-flight: 409. */
	crypto_hash_sha256(h, (const unsigned char *)"k-busy", 6);
	sodium_bin2hex(hx, sizeof(hx), h, sizeof(h));
	snprintf(key, sizeof(key), "/meridian/idem/acme/%s", hx);
	snprintf(val, sizeof(val),
		 "{\"state\":\"pending\",\"body\":\"%064d\",\"at\":%lld}", 0,
		 (long long)time(NULL));
	T_OK(mer_etcd_put(F.cli, key, strlen(key), val, strlen(val), 0, NULL));
	T_OK(bfx_req(&F, "POST", "/v1/jobs", BFX_ACME, gravity_job, "k-busy",
		     &r1));
	/* The body hash differs from the zeros, so this is a mismatch... */
	T_EQ_INT(r1.status, 422);
	bres_clear(&r1);
	/* ...and with the right hash it is "in progress". */
	unsigned char bh[32];
	crypto_hash_sha256_state hs;
	crypto_hash_sha256_init(&hs);
	crypto_hash_sha256_update(&hs, (const unsigned char *)"acme", 5);
	crypto_hash_sha256_update(&hs, (const unsigned char *)gravity_job,
				  strlen(gravity_job));
	crypto_hash_sha256_final(&hs, bh);
	char bhx[65];
	sodium_bin2hex(bhx, sizeof(bhx), bh, sizeof(bh));
	snprintf(val, sizeof(val),
		 "{\"state\":\"pending\",\"body\":\"%s\",\"at\":%lld}", bhx,
		 (long long)time(NULL));
	T_OK(mer_etcd_put(F.cli, key, strlen(key), val, strlen(val), 0, NULL));
	T_OK(bfx_req(&F, "POST", "/v1/jobs", BFX_ACME, gravity_job, "k-busy",
		     &r1));
	T_EQ_INT(r1.status, 409);
	T_EQ_STR(bres_str(&r1, "error"), "idempotency_in_progress");
	bres_clear(&r1);
	/* An abandoned reservation (its broker died) is taken over. */
	snprintf(val, sizeof(val),
		 "{\"state\":\"pending\",\"body\":\"%s\",\"at\":%lld}", bhx,
		 (long long)time(NULL) - 3600);
	T_OK(mer_etcd_put(F.cli, key, strlen(key), val, strlen(val), 0, NULL));
	T_OK(bfx_req(&F, "POST", "/v1/jobs", BFX_ACME, gravity_job, "k-busy",
		     &r1));
	T_EQ_INT(r1.status, 201);
	bres_clear(&r1);
}

static void test_list_filters_and_paging(void)
{
	struct bres r;
	char path[512], cursor[200] = "";
	int seen = 0, pages = 0;

	SETUP();
	for (int i = 0; i < 5; i++) {
		T_OK(bfx_req(&F, "POST", "/v1/jobs", BFX_BETA,
			     "{\"name\": \"page-me\", \"stages\": [{\"name\": "
			     "\"s\", \"kind\": \"generic\", \"resources\": "
			     "{\"cpu\": 1, \"memory_mb\": 10}}]}",
			     NULL, &r));
		T_EQ_INT(r.status, 201);
		bres_clear(&r);
	}
	do {
		snprintf(path, sizeof(path),
			 "/v1/jobs?name=page-me&limit=2%s%s",
			 cursor[0] ? "&cursor=" : "", cursor);
		T_OK(bfx_req(&F, "GET", path, BFX_BETA, NULL, NULL, &r));
		T_EQ_INT(r.status, 200);
		json_t *jobs = json_object_get(r.json, "jobs");
		T_EXPECT(json_array_size(jobs) <= 2);
		for (size_t i = 0; i < json_array_size(jobs); i++) {
			json_t *j = json_array_get(jobs, i);
			T_EQ_STR(json_string_value(json_object_get(j, "name")),
				 "page-me");
			T_EQ_STR(
			    json_string_value(json_object_get(j, "tenant")),
			    "beta");
			seen++;
		}
		const char *nc = bres_str(&r, "next_cursor");
		snprintf(cursor, sizeof(cursor), "%s", nc ? nc : "");
		bres_clear(&r);
		pages++;
	} while (cursor[0] && pages < 10);
	T_EQ_INT(seen, 5);
	T_EXPECT(pages >= 3);
	/* acme sees none of beta's. */
	T_OK(bfx_req(&F, "GET", "/v1/jobs?name=page-me", BFX_ACME, NULL, NULL,
		     &r));
	T_EQ_INT(json_array_size(json_object_get(r.json, "jobs")), 0);
	bres_clear(&r);
	/* Bad parameters name themselves. */
	T_OK(bfx_req(&F, "GET", "/v1/jobs?state=bogus", BFX_BETA, NULL, NULL,
		     &r));
	T_EQ_INT(r.status, 400);
	T_EQ_STR(bres_str(&r, "field"), "state");
	bres_clear(&r);
	T_OK(bfx_req(&F, "GET", "/v1/jobs?limit=0", BFX_BETA, NULL, NULL, &r));
	T_EQ_INT(r.status, 400);
	T_EQ_STR(bres_str(&r, "field"), "limit");
	bres_clear(&r);
	T_OK(bfx_req(&F, "GET", "/v1/jobs?cursor=zzz", BFX_BETA, NULL, NULL,
		     &r));
	T_EQ_INT(r.status, 400);
	T_EQ_STR(bres_str(&r, "field"), "cursor");
	bres_clear(&r);
	T_OK(bfx_req(&F, "GET", "/v1/jobs?colour=red", BFX_BETA, NULL, NULL,
		     &r));
	T_EQ_INT(r.status, 400);
	bres_clear(&r);
	/* State filter: every job listed as placed is placed. */
	t_sleep_ms(600);
	T_OK(bfx_req(&F, "GET", "/v1/jobs?state=placed&limit=100", BFX_BETA,
		     NULL, NULL, &r));
	T_EQ_INT(r.status, 200);
	T_EXPECT(json_array_size(json_object_get(r.json, "jobs")) >= 1);
	for (size_t i = 0; i < json_array_size(json_object_get(r.json, "jobs"));
	     i++)
		T_EQ_STR(json_string_value(json_object_get(
			     json_array_get(json_object_get(r.json, "jobs"), i),
			     "state")),
			 "placed");
	bres_clear(&r);
}

static void test_cancel(void)
{
	struct bres r;
	char path[128];

	SETUP();
	T_OK(bfx_req(&F, "POST", "/v1/jobs", BFX_ACME, gravity_job, NULL, &r));
	snprintf(path, sizeof(path), "/v1/jobs/%s", bfx_nz(bres_str(&r, "id")));
	bres_clear(&r);
	T_OK(bfx_req(&F, "DELETE", path, BFX_ACME, NULL, NULL, &r));
	T_EQ_INT(r.status, 200);
	T_EQ_STR(bres_str(&r, "state"), "cancelled");
	T_EQ_STR(
	    json_string_value(json_object_get(
		json_array_get(json_object_get(r.json, "stages"), 0), "state")),
	    "cancelled");
	bres_clear(&r);
	/* Cancelling again is harmless; the placer leaves it alone. */
	T_OK(bfx_req(&F, "DELETE", path, BFX_ACME, NULL, NULL, &r));
	T_EQ_INT(r.status, 200);
	bres_clear(&r);
	t_sleep_ms(500);
	T_OK(bfx_req(&F, "GET", path, BFX_ACME, NULL, NULL, &r));
	T_EQ_STR(bres_str(&r, "state"), "cancelled");
	bres_clear(&r);
	T_OK(bfx_req(&F, "DELETE", "/v1/jobs/jffffffffffffffffff0", BFX_ACME,
		     NULL, NULL, &r));
	T_EQ_INT(r.status, 404);
	bres_clear(&r);
}

static void test_dry_run_and_drain(void)
{
	struct bres r;
	json_t *st;

	SETUP();
	T_OK(bfx_req(&F, "POST", "/v1/placements:dry-run", BFX_ACME,
		     gravity_job, NULL, &r));
	T_EQ_INT(r.status, 200);
	st = json_array_get(json_object_get(r.json, "stages"), 0);
	T_EQ_STR(json_string_value(json_object_get(st, "site")), "bj-a800");
	T_EXPECT(json_is_true(json_object_get(r.json, "dry_run")));
	bres_clear(&r);

	T_OK(bfx_req(&F, "POST", "/v1/sites/bj-a800:drain", BFX_ADMIN, NULL,
		     NULL, &r));
	T_EQ_INT(r.status, 200);
	bres_clear(&r);
	T_OK(
	    bfx_req(&F, "GET", "/v1/sites/bj-a800", BFX_ADMIN, NULL, NULL, &r));
	T_EQ_INT(r.status, 200);
	T_EXPECT(json_is_true(json_object_get(r.json, "drained")));
	bres_clear(&r);
	/* Drained: the corpus site is no candidate any more. */
	T_OK(bfx_req(&F, "POST", "/v1/placements:dry-run?candidates=0",
		     BFX_ACME, gravity_job, NULL, &r));
	T_EQ_INT(r.status, 200);
	st = json_array_get(json_object_get(r.json, "stages"), 0);
	T_EXPECT(json_string_value(json_object_get(st, "site")) == NULL ||
		 strcmp(json_string_value(json_object_get(st, "site")),
			"bj-a800") != 0);
	T_CONTAINS(r.body, "drained");
	bres_clear(&r);
	T_OK(bfx_req(&F, "POST", "/v1/sites/bj-a800:undrain", BFX_ADMIN, NULL,
		     NULL, &r));
	T_EQ_INT(r.status, 200);
	bres_clear(&r);
	T_OK(bfx_req(&F, "POST", "/v1/placements:dry-run", BFX_ACME,
		     gravity_job, NULL, &r));
	st = json_array_get(json_object_get(r.json, "stages"), 0);
	T_EQ_STR(json_string_value(json_object_get(st, "site")), "bj-a800");
	bres_clear(&r);
	T_OK(bfx_req(&F, "POST", "/v1/sites/nowhere:drain", BFX_ADMIN, NULL,
		     NULL, &r));
	T_EQ_INT(r.status, 404);
	bres_clear(&r);
}

static void test_unplaceable_stays_pending(void)
{
	struct bres r;
	char path[128], id[64];

	SETUP();
	T_OK(
	    bfx_req(&F, "POST", "/v1/jobs", BFX_ACME,
		    "{\"name\": \"nowhere\", \"constraints\": {\"regions\": "
		    "{\"allow\": [\"ap-nowhere-1\"]}}, \"stages\": [{\"name\": "
		    "\"t\", \"kind\": \"generic\", \"resources\": {\"cpu\": 1, "
		    "\"memory_mb\": 10}}]}",
		    NULL, &r));
	T_EQ_INT(r.status, 201);
	snprintf(id, sizeof(id), "%s", bfx_nz(bres_str(&r, "id")));
	bres_clear(&r);
	snprintf(path, sizeof(path), "/v1/jobs/%s/placement", id);
	long long end = t_now_ms() + 10000;
	do {
		T_OK(bfx_req(&F, "GET", path, BFX_ACME, NULL, NULL, &r));
		if (r.status == 200)
			break;
		bres_clear(&r);
		t_sleep_ms(50);
	} while (t_now_ms() < end);
	T_EQ_INT(r.status, 200);
	T_CONTAINS(r.body, "region");
	bres_clear(&r);
	long st;
	json_t *j = get_job(id, BFX_ACME, &st);
	T_EQ_STR(json_string_value(json_object_get(j, "state")), "pending");
	T_EXPECT(strlen(bfx_nz(json_string_value(json_object_get(
		     json_array_get(json_object_get(j, "stages"), 0),
		     "reason")))) > 0);
	json_decref(j);
}

static void test_sites_and_revoke(void)
{
	struct bres r;

	SETUP();
	T_OK(bfx_req(&F, "GET", "/v1/sites", BFX_ACME, NULL, NULL, &r));
	T_EQ_INT(r.status, 200);
	T_CONTAINS(r.body, "\"sh-h800\"");
	T_CONTAINS(r.body, "\"fra-a100\"");
	bres_clear(&r);
	T_OK(bfx_req(&F, "GET", "/v1/sites/nope", BFX_ACME, NULL, NULL, &r));
	T_EQ_INT(r.status, 404);
	bres_clear(&r);
	/* A report in etcd (as the link writes them) adds a site. */
	const char *rep = "{\"name\": \"sim-1\", \"region\": \"eu-west-1\", "
			  "\"scheduler\": \"sim\", \"pools\": [{\"name\": "
			  "\"p\", \"resources\": {\"cpu\": {\"total\": 64, "
			  "\"free\": 64}, \"memory_mb\": {\"total\": 65536, "
			  "\"free\": 65536}}}]}";
	const char *key = "/meridian/site-reports/sim-1";
	T_OK(mer_etcd_put(F.cli, key, strlen(key), rep, strlen(rep), 0, NULL));
	T_OK(bfx_req(&F, "GET", "/v1/sites/sim-1", BFX_ADMIN, NULL, NULL, &r));
	T_EQ_INT(r.status, 200);
	T_EQ_STR(bres_str(&r, "source"), "report");
	bres_clear(&r);
	T_OK(bfx_req(&F, "DELETE", "/v1/sites/sim-1", BFX_ADMIN, NULL, NULL,
		     &r));
	T_EQ_INT(r.status, 200);
	bres_clear(&r);
	T_OK(bfx_req(&F, "GET", "/v1/sites/sim-1", BFX_ADMIN, NULL, NULL, &r));
	T_EXPECT(json_is_true(json_object_get(r.json, "revoked")));
	bres_clear(&r);
	/* A revoked site is out of placement. */
	T_OK(bfx_req(&F, "POST", "/v1/placements:dry-run?candidates=0",
		     BFX_ACME,
		     "{\"name\": \"x\", \"constraints\": {\"sites\": "
		     "{\"allow\": [\"sim-1\"]}}, "
		     "\"stages\": [{\"name\": \"s\", \"kind\": \"generic\", "
		     "\"resources\": {\"cpu\": 1, \"memory_mb\": 1}}]}",
		     NULL, &r));
	T_EQ_INT(r.status, 200);
	T_EXPECT(strstr(r.body ? r.body : "", "\"site\":\"sim-1\"") == NULL);
	bres_clear(&r);
}

static void test_tokens(void)
{
	struct bres r;

	SETUP();
	T_OK(bfx_req(&F, "POST", "/v1/tokens", BFX_ADMIN,
		     "{\"site\": \"new-site\", \"region\": \"eu-west-1\", "
		     "\"ttl\": \"1h\"}",
		     NULL, &r));
	T_EQ_INT(r.status, 201);
	T_ASSERT(bres_str(&r, "token") != NULL);
	T_EXPECT(strchr(bres_str(&r, "token"), '.') != NULL);
	T_CONTAINS(bres_str(&r, "broker_key"), "SHA256:");
	/* Only a hash is stored. */
	char key[128];
	struct mer_etcd_kv kv = {0};
	snprintf(key, sizeof(key), "/meridian/tokens/%s", bres_str(&r, "id"));
	T_OK(mer_etcd_get(F.cli, key, strlen(key), &kv, NULL));
	T_EXPECT(strstr(kv.value, strchr(bres_str(&r, "token"), '.') + 1) ==
		 NULL);
	mer_etcd_kv_clear(&kv);
	bres_clear(&r);
	T_OK(bfx_req(&F, "POST", "/v1/tokens", BFX_ADMIN,
		     "{\"site\": \"Bad Name\", \"region\": \"r\"}", NULL, &r));
	T_EQ_INT(r.status, 400);
	bres_clear(&r);
	T_OK(bfx_req(&F, "POST", "/v1/tokens", BFX_ADMIN,
		     "{\"site\": \"ok\", \"region\": \"r\", \"ttl\": \"soon\"}",
		     NULL, &r));
	T_EQ_INT(r.status, 400);
	T_EQ_STR(bres_str(&r, "field"), "ttl");
	bres_clear(&r);
}

static long policy_version(void)
{
	struct bres r;
	long v = -1;

	if (bfx_req(&F, "GET", "/v1/policy", BFX_ACME, NULL, NULL, &r) == 0 &&
	    r.status == 200)
		v = (long)json_integer_value(
		    json_object_get(r.json, "version"));
	bres_clear(&r);
	return v;
}

static void test_policy_versions_and_reload(void)
{
	struct bres r;
	long v0, v1;
	char *text = NULL;

	SETUP();
	v0 = policy_version();
	T_EXPECT(v0 >= 1);
	/* A bad policy is refused with its position and field. */
	T_OK(bfx_req(&F, "PUT", "/v1/policy", BFX_ADMIN,
		     "{\"version\": \"x\",\n \"weights\": {\"compute\": "
		     "\"heavy\"}}",
		     NULL, &r));
	T_EQ_INT(r.status, 400);
	T_CONTAINS(bres_str(&r, "message"), "request body:2:");
	T_CONTAINS(bres_str(&r, "field"), "weights.compute");
	bres_clear(&r);
	T_EQ_INT(policy_version(), v0);
	/* A good one becomes the next version; the old one stays readable. */
	char path[900];
	snprintf(path, sizeof(path), "%s/policy/examples/locality-first.json",
		 bfx_top());
	T_OK(t_read_file(path, &text, NULL));
	T_OK(bfx_req(&F, "PUT", "/v1/policy", BFX_ADMIN, text, NULL, &r));
	T_EQ_INT(r.status, 200);
	bres_clear(&r);
	free(text);
	v1 = policy_version();
	T_EQ_INT(v1, v0 + 1);
	snprintf(path, sizeof(path), "/v1/policy?version=%ld", v0);
	T_OK(bfx_req(&F, "GET", path, BFX_ACME, NULL, NULL, &r));
	T_EQ_INT(r.status, 200);
	T_CONTAINS(r.body, "cost-first");
	bres_clear(&r);

	/* SIGHUP with a broken policy file: refused, version unchanged. */
	T_OK(bfx_write(F.policy, "{\"version\": \"broken\", \"weights\": 7}"));
	kill(t_proc_pid(F.proc), SIGHUP);
	t_sleep_ms(500);
	T_EQ_INT(policy_version(), v1);
	T_OK(bfx_req(&F, "GET", "/readyz", NULL, NULL, NULL, &r));
	T_EQ_INT(r.status, 200);
	bres_clear(&r);
	/* SIGHUP with a good one: the next version. */
	snprintf(path, sizeof(path), "%s/policy/examples/inference-first.json",
		 bfx_top());
	T_OK(bfx_copy(path, F.policy));
	kill(t_proc_pid(F.proc), SIGHUP);
	long long end = t_now_ms() + 5000;
	while (policy_version() != v1 + 1 && t_now_ms() < end)
		t_sleep_ms(50);
	T_EQ_INT(policy_version(), v1 + 1);
	T_OK(bfx_req(&F, "GET", "/v1/policy", BFX_ACME, NULL, NULL, &r));
	T_CONTAINS(r.body, "inference-first");
	bres_clear(&r);
}

/* Every sample line is "name{labels} value" with a number. */
static void test_metrics(void)
{
	struct bres r;
	int samples = 0;

	SETUP();
	T_OK(bfx_req(&F, "GET", "/metrics", NULL, NULL, NULL, &r));
	T_EQ_INT(r.status, 200);
	T_CONTAINS(r.hdrs, "text/plain; version=0.0.4");
	char *save = NULL;
	for (char *line = strtok_r(r.body, "\n", &save); line;
	     line = strtok_r(NULL, "\n", &save)) {
		if (line[0] == '#') {
			T_EXPECT(strncmp(line, "# HELP ", 7) == 0 ||
				 strncmp(line, "# TYPE ", 7) == 0);
			continue;
		}
		char *sp = strrchr(line, ' ');
		T_ASSERT(sp != NULL);
		char *end;
		strtod(sp + 1, &end);
		T_EXPECT(*end == 0);
		for (char *p = line; p < sp && *p != '{'; p++)
			T_EXPECT(isalnum((unsigned char)*p) || *p == '_');
		samples++;
	}
	T_EXPECT(samples > 20);
	bres_clear(&r);
	T_OK(bfx_req(&F, "GET", "/metrics", NULL, NULL, NULL, &r));
	T_CONTAINS(r.body, "meridian_http_requests_total{route=\"/v1/jobs\","
			   "method=\"POST\",code=\"201\"}");
	T_CONTAINS(r.body, "meridian_jobs{state=\"placed\"}");
	T_CONTAINS(r.body, "meridian_placement_duration_seconds_count");
	T_CONTAINS(r.body, "meridian_etcd_request_duration_seconds_bucket");
	bres_clear(&r);
}

/* Last: SIGTERM stops the broker cleanly (and, in sanitizer builds,
 * without leaks or errors). */
static void test_clean_exit(void)
{
	int st;

	SETUP();
	st = bfx_stop_checked(&F);
	if (st != 0) {
		char *log = NULL;
		if (t_read_file(F.log, &log, NULL) == 0)
			fprintf(stderr, "--- broker log ---\n%s\n", log);
		free(log);
	}
	T_EQ_INT(st, 0);
}

/* A finished idempotency record lives on a lease: after the retention
 * (5 s here, plus one 1 s window) etcd drops it, and the same key makes a
 * new job. */
static void test_idempotency_expires(void)
{
	struct bres r1, r2;
	char key[256], hx[65];
	unsigned char h[32];
	struct mer_etcd_kv kv = {0};

	SETUP();
	T_OK(bfx_req(&F, "POST", "/v1/jobs", BFX_ACME, gravity_job, "k-exp",
		     &r1));
	T_EQ_INT(r1.status, 201);
	crypto_hash_sha256(h, (const unsigned char *)"k-exp", 5);
	sodium_bin2hex(hx, sizeof(hx), h, sizeof(h));
	snprintf(key, sizeof(key), "/meridian/idem/acme/%s", hx);
	T_OK(mer_etcd_get(F.cli, key, strlen(key), &kv, NULL));
	T_EXPECT(kv.lease != 0);
	T_CONTAINS(kv.value, "\"done\"");
	mer_etcd_kv_clear(&kv);
	int gone = 0;
	for (int i = 0; i < 150 && !gone; i++) {
		usleep(100000);
		int rv = mer_etcd_get(F.cli, key, strlen(key), &kv, NULL);
		mer_etcd_kv_clear(&kv);
		gone = rv == MER_ENOTFOUND;
	}
	T_EXPECT(gone);
	T_OK(bfx_req(&F, "POST", "/v1/jobs", BFX_ACME, gravity_job, "k-exp",
		     &r2));
	T_EQ_INT(r2.status, 201);
	T_EXPECT(strcmp(bfx_nz(bres_str(&r2, "id")),
			bfx_nz(bres_str(&r1, "id"))) != 0);
	T_EXPECT(!strstr(r2.hdrs, "Idempotent-Replayed"));
	bres_clear(&r1);
	bres_clear(&r2);
}

static const struct t_case cases[] = {
    {"health", test_health},
    {"auth", test_auth},
    {"submit_stored_and_placed", test_submit_stored_and_placed},
    {"three_stages_placed_in_order", test_three_stages_placed_in_order},
    {"bad_fields", test_bad_fields},
    {"never_fits", test_never_fits},
    {"too_large", test_too_large},
    {"idempotency", test_idempotency},
    {"idempotency_expires", test_idempotency_expires},
    {"list_filters_and_paging", test_list_filters_and_paging},
    {"cancel", test_cancel},
    {"dry_run_and_drain", test_dry_run_and_drain},
    {"unplaceable_stays_pending", test_unplaceable_stays_pending},
    {"sites_and_revoke", test_sites_and_revoke},
    {"tokens", test_tokens},
    {"policy_versions_and_reload", test_policy_versions_and_reload},
    {"metrics", test_metrics},
    {"clean_exit", test_clean_exit},
};

T_MAIN("broker_api", cases)
