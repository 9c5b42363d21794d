/*
 * The Slurm adapter against a fixture slurmrestd over HTTP (the real one is
 * in agent_slurm_test.c, over a unix socket): the JWT headers
 * X-SLURM-USER-NAME / X-SLURM-USER-TOKEN, the OpenAPI version found at run
 * time, node states (drained and down nodes are not allocatable), GRES
 * strings with socket and index suffixes, pending demand, and an unknown
 * job. Bodies follow slurmrestd 22.05's v0.0.38.
 */
#include "common/err.h"
#include "common/http.h"
#include "site-agent/adapter.h"
#include "site-agent/config.h"
#include "tests/harness.h"
#include "tests/lib/fixture_site.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static struct {
	pthread_mutex_t lock;
	int bad_auth;
	int no_limit; /* the running job has no time limit */
	char last_path[256];
	json_t *submitted;
} fx = {.lock = PTHREAD_MUTEX_INITIALIZER};

static int authed(struct mer_http_req *req, struct mer_http_res *res)
{
	const char *u = mer_http_req_header(req, "X-SLURM-USER-NAME");
	const char *t = mer_http_req_header(req, "X-SLURM-USER-TOKEN");

	pthread_mutex_lock(&fx.lock);
	snprintf(fx.last_path, sizeof(fx.last_path), "%s",
		 mer_http_req_path(req));
	pthread_mutex_unlock(&fx.lock);
	if (!u || !t || strcmp(u, "meridian") || strcmp(t, "jwt-abc")) {
		pthread_mutex_lock(&fx.lock);
		fx.bad_auth++;
		pthread_mutex_unlock(&fx.lock);
		mer_http_res_text(res, 401, "text/plain",
				  "Authentication failure", 22);
		return 0;
	}
	return 1;
}

static json_t *meta(void)
{
	return json_pack("{s:{s:s, s:s}, s:{s:{s:i, s:i, s:i}, s:s}}", "plugin",
			 "type", "openapi/v0.0.38", "name",
			 "Slurm OpenAPI v0.0.38", "Slurm", "version", "major",
			 22, "micro", 8, "minor", 5, "release", "22.05.8");
}

static int h_openapi(struct mer_http_req *req, struct mer_http_res *res,
		     void *arg)
{
	(void)arg;
	if (!authed(req, res))
		return 0;
	/* slurmrestd can load several plugins; v0.0.36 is older than we
	 * speak, v0.0.41 newer than we tested: v0.0.38 must be chosen */
	return mer_http_res_json_new(
	    res, 200,
	    json_pack("{s:s, s:{s:{}, s:{}, s:{}, s:{}, s:{}, s:{}, s:{}}}",
		      "openapi", "3.0.2", "paths", "/slurm/v0.0.36/ping",
		      "/slurm/v0.0.37/nodes", "/slurm/v0.0.38/ping",
		      "/slurm/v0.0.38/job/{job_id}", "/slurmdb/v0.0.38/jobs",
		      "/slurmdb/v0.0.38/job/{job_id}",
		      "/slurm/v0.0.41/nodes/"));
}

static int h_partitions(struct mer_http_req *req, struct mer_http_res *res,
			void *arg)
{
	(void)arg;
	if (!authed(req, res))
		return 0;
	return mer_http_res_json_new(
	    res, 200,
	    json_pack("{s:o, s:[], s:[{s:s, s:s, s:s, s:i, s:i}]}", "meta",
		      meta(), "errors", "partitions", "name", "gpu", "nodes",
		      "g[1-3]", "state", "UP", "total_cpus", 192, "total_nodes",
		      3));
}

static json_t *node(const char *name, const char *state, json_t *flags,
		    int cpus, int alloc, const char *gres, const char *used)
{
	return json_pack("{s:s, s:s, s:o, s:i, s:i, s:i, s:i, s:s, s:s, "
			 "s:[s]}",
			 "name", name, "state", state, "state_flags", flags,
			 "cpus", cpus, "alloc_cpus", alloc, "real_memory",
			 256000, "alloc_memory", alloc * 1000, "gres", gres,
			 "gres_used", used, "partitions", "gpu");
}

static int h_nodes(struct mer_http_req *req, struct mer_http_res *res,
		   void *arg)
{
	(void)arg;
	if (!authed(req, res))
		return 0;
	return mer_http_res_json_new(
	    res, 200,
	    json_pack(
		"{s:o, s:[], s:[o, o, o]}", "meta", meta(), "errors", "nodes",
		node("g1", "mixed", json_array(), 64, 16, "gpu:a100:4(S:0-1)",
		     "gpu:a100:1(IDX:0),gpu:a100:0(IDX:N/A)"),
		node("g2", "idle", json_pack("[s]", "DRAIN"), 64, 0,
		     "gpu:a100:4(S:0-1)", "gpu:a100:0(IDX:N/A)"),
		node("g3", "down", json_pack("[s]", "NOT_RESPONDING"), 64, 0,
		     "gpu:a100:4", "gpu:a100:0")));
}

static int h_jobs(struct mer_http_req *req, struct mer_http_res *res, void *arg)
{
	long long now = (long long)time(NULL);
	long long end;

	(void)arg;
	if (!authed(req, res))
		return 0;
	pthread_mutex_lock(&fx.lock);
	/* Slurm puts an unlimited job's end a year after its start. */
	end = fx.no_limit ? now - 4 + 365 * 86400LL : now + 600;
	pthread_mutex_unlock(&fx.lock);
	return mer_http_res_json_new(
	    res, 200,
	    json_pack("{s:o, s:[], s:[{s:I, s:s, s:s, s:s, s:i, s:i, "
		      "s:i, s:s}, {s:I, s:s, s:s, s:s, s:i, s:i, s:I}]}",
		      "meta", meta(), "errors", "jobs", "job_id",
		      (json_int_t)101, "name", "big", "job_state", "PENDING",
		      "partition", "gpu", "cpus", 32, "node_count", 2,
		      "memory_per_node", 4000, "tres_per_node",
		      "gres:gpu:a100:4", "job_id", (json_int_t)99, "name",
		      "mer:job-1/train", "job_state", "RUNNING", "partition",
		      "gpu", "cpus", 16, "node_count", 1, "end_time",
		      (json_int_t)end));
}

static int h_job(struct mer_http_req *req, struct mer_http_res *res, void *arg)
{
	const char *id = mer_http_req_param(req, "id");

	(void)arg;
	if (!authed(req, res))
		return 0;
	if (strcmp(id, "99") != 0)
		/* 22.05 answers an unknown id with 500 and an error list */
		return mer_http_res_json_new(
		    res, 500,
		    json_pack("{s:o, s:[{s:s, s:i, s:s}], s:[]}", "meta",
			      meta(), "errors", "error",
			      "_handle_job_get: unknown job 12345",
			      "error_number", 2017, "description",
			      "Invalid job id specified", "jobs"));
	return mer_http_res_json_new(
	    res, 200,
	    json_pack("{s:o, s:[], s:[{s:I, s:s, s:s, s:i, s:s}]}", "meta",
		      meta(), "errors", "jobs", "job_id", (json_int_t)99,
		      "name", "mer:job-1/train", "job_state", "FAILED",
		      "exit_code", 2 << 8, "state_reason", "NonZeroExitCode"));
}

/* slurmdbd still knows job 77, which slurmctld purged after MinJobAge. */
static int h_db_job(struct mer_http_req *req, struct mer_http_res *res,
		    void *arg)
{
	const char *id = mer_http_req_param(req, "id");

	(void)arg;
	if (!authed(req, res))
		return 0;
	/* an empty result (ESLURM_REST_EMPTY_RESULT) is a 200 */
	if (strcmp(id, "77") != 0)
		return mer_http_res_json_new(
		    res, 200,
		    json_pack("{s:o, s:[{s:s, s:i}], s:[]}", "meta", meta(),
			      "errors", "error", "Nothing found",
			      "error_number", 9003, "jobs"));
	return mer_http_res_json_new(
	    res, 200,
	    json_pack("{s:o, s:[], s:[{s:I, s:s, s:{s:s, s:s}, "
		      "s:{s:s, s:i}}]}",
		      "meta", meta(), "errors", "jobs", "job_id",
		      (json_int_t)77, "name", "mer:job-0/old", "state",
		      "current", "COMPLETED", "reason", "None", "exit_code",
		      "status", "SUCCESS", "return_code", 0));
}

static int h_submit(struct mer_http_req *req, struct mer_http_res *res,
		    void *arg)
{
	(void)arg;
	if (!authed(req, res))
		return 0;
	pthread_mutex_lock(&fx.lock);
	json_decref(fx.submitted);
	fx.submitted = json_incref(mer_http_req_json(req));
	pthread_mutex_unlock(&fx.lock);
	return mer_http_res_json_new(
	    res, 200,
	    json_pack("{s:o, s:[], s:I, s:s, s:s}", "meta", meta(), "errors",
		      "job_id", (json_int_t)102, "step_id", "BATCH",
		      "job_submit_user_msg", ""));
}

static const struct mer_http_route routes[] = {
    {"GET", "/openapi", h_openapi, NULL, 0},
    {"GET", "/slurm/v0.0.38/partitions", h_partitions, NULL, 0},
    {"GET", "/slurm/v0.0.38/nodes", h_nodes, NULL, 0},
    {"GET", "/slurm/v0.0.38/jobs", h_jobs, NULL, 0},
    {"GET", "/slurm/v0.0.38/job/{id}", h_job, NULL, 0},
    {"GET", "/slurmdb/v0.0.38/job/{id}", h_db_job, NULL, 0},
    {"POST", "/slurm/v0.0.38/job/submit", h_submit, NULL, MER_HTTP_JSON_BODY},
};

static void test_over_http(void)
{
	struct t_fxsite e;
	struct mer_agent_cfg *cfg = &e.cfg;
	struct mer_agent_capacity *cap = calloc(1, sizeof(*cap));
	struct mer_agent_stage st = {0};
	struct mer_agent_stage_status ss;
	const struct mer_agent_res *r;
	void *inst = NULL;
	char err[512] = "", job[64];
	int rv;

	T_ASSERT(cap != NULL);
	rv = t_fxsite_start(&e, "agent-slurmrest", routes,
			    sizeof(routes) / sizeof(routes[0]));
	if (!rv)
		rv = t_fxsite_cfg(
		    &e, "s.json",
		    "{\"site\": {\"name\": \"s\", \"region\": \"r\"},"
		    " \"scheduler\": {\"kind\": \"slurm\", \"url\": "
		    "\"http://127.0.0.1:%d\", \"user\": \"meridian\", "
		    "\"token\": \"jwt-abc\"}}",
		    t_fxsite_port(&e));
	if (rv) {
		t_fail(__FILE__, __LINE__,
		       "fixture slurmrestd did not start: %s", t_strerror(rv));
		goto out;
	}
	T_OK(mer_agent_slurm_ops.open(cfg, &inst, err, sizeof(err)));
	rv = mer_agent_slurm_ops.probe(inst, cap, err, sizeof(err));
	if (rv)
		printf("    probe: %s\n", err);
	T_EQ_INT(rv, 0);
	T_EQ_INT(fx.bad_auth, 0);
	T_CONTAINS(cap->version, "22.05.8");
	T_CONTAINS(cap->version, "v0.0.38");
	T_EQ_INT(cap->npools, 1);
	/* g2 drained and g3 down: only g1 is allocatable */
	T_ASSERT((r = mer_agent_pool_find(&cap->pools[0], "cpu")) != NULL);
	T_EXPECT(r->total == 192);
	T_EXPECT(r->allocatable == 64);
	T_EXPECT(r->free == 48);
	T_EXPECT(r->pending == 32);
	T_ASSERT((r = mer_agent_pool_find(&cap->pools[0], "gpu:a100")) != NULL);
	T_EXPECT(r->total == 12);
	T_EXPECT(r->allocatable == 4);
	T_EXPECT(r->free == 3);
	T_EXPECT(r->pending == 8); /* 4 per node x 2 nodes */
	T_ASSERT((r = mer_agent_pool_find(&cap->pools[0], "memory_mb")) !=
		 NULL);
	T_EXPECT(r->pending == 8000);
	/* demand does not fit: wait until the running job's end (~600 s) */
	/* (601: the fixture's clock may tick between its reply and ours) */
	T_EXPECT(cap->pools[0].est_wait_s > 590 &&
		 cap->pools[0].est_wait_s <= 601);
	/* a running job without a time limit says nothing about the wait:
	 * the bounded default, not a year */
	pthread_mutex_lock(&fx.lock);
	fx.no_limit = 1;
	pthread_mutex_unlock(&fx.lock);
	memset(cap, 0, sizeof(*cap));
	T_OK(mer_agent_slurm_ops.probe(inst, cap, err, sizeof(err)));
	T_EXPECT(cap->pools[0].est_wait_s == 3600);
	pthread_mutex_lock(&fx.lock);
	fx.no_limit = 0;
	pthread_mutex_unlock(&fx.lock);

	/* status: raw wait status 2<<8 is exit code 2 */
	T_OK(mer_agent_slurm_ops.status(inst, "99", &ss, err, sizeof(err)));
	T_EQ_INT(ss.state, MER_AGENT_STAGE_FAILED);
	T_EQ_INT(ss.exit_code, 2);
	T_CONTAINS(ss.reason, "NonZeroExitCode");
	T_EQ_INT(
	    mer_agent_slurm_ops.status(inst, "12345", &ss, err, sizeof(err)),
	    MER_ENOTFOUND);
	/* purged by slurmctld, still in accounting: not lost */
	T_OK(mer_agent_slurm_ops.status(inst, "77", &ss, err, sizeof(err)));
	T_EQ_INT(ss.state, MER_AGENT_STAGE_SUCCEEDED);
	T_EQ_INT(ss.exit_code, 0);
	T_EQ_INT(
	    mer_agent_slurm_ops.status(inst, "1;rm", &ss, err, sizeof(err)),
	    MER_EINVAL);
	T_OK(mer_agent_slurm_ops.find(inst, "job-1/train", job, sizeof(job),
				      err, sizeof(err)));
	T_EQ_STR(job, "99");

	/* submit: the v0.0.38 body */
	snprintf(st.id, sizeof(st.id), "job-2/prep");
	snprintf(st.pool, sizeof(st.pool), "gpu");
	snprintf(st.gpu_model, sizeof(st.gpu_model), "a100");
	st.command = strdup("echo hi");
	st.cpus = 4;
	st.gpus = 2;
	st.memory_mb = 2048;
	st.time_limit_s = 90;
	T_OK(mer_agent_slurm_ops.submit(inst, &st, job, sizeof(job), err,
					sizeof(err)));
	T_EQ_STR(job, "102");
	pthread_mutex_lock(&fx.lock);
	json_t *b = json_incref(fx.submitted);
	pthread_mutex_unlock(&fx.lock);
	T_ASSERT(b != NULL);
	json_t *j = json_object_get(b, "job");
	T_EQ_STR(json_string_value(json_object_get(b, "script")),
		 "#!/bin/sh\necho hi\n");
	T_EQ_STR(json_string_value(json_object_get(j, "name")),
		 "mer:job-2/prep");
	T_EQ_STR(json_string_value(json_object_get(j, "partition")), "gpu");
	T_EQ_STR(json_string_value(json_object_get(j, "gres")), "gpu:a100:2");
	T_EQ_INT(json_integer_value(json_object_get(j, "cpus_per_task")), 4);
	T_EQ_INT(json_integer_value(json_object_get(j, "memory_per_node")),
		 2048);
	T_EQ_INT(json_integer_value(json_object_get(j, "time_limit")), 2);
	T_EQ_STR(json_string_value(json_object_get(
		     json_object_get(j, "environment"), "MERIDIAN_STAGE_ID")),
		 "job-2/prep");
	json_decref(b);

	/* replicas: per-task GPUs and memory, so each replica gets its own */
	snprintf(st.id, sizeof(st.id), "job-2/ddp");
	st.replicas = 4;
	T_OK(mer_agent_slurm_ops.submit(inst, &st, job, sizeof(job), err,
					sizeof(err)));
	pthread_mutex_lock(&fx.lock);
	b = json_incref(fx.submitted);
	pthread_mutex_unlock(&fx.lock);
	j = json_object_get(b, "job");
	T_EQ_INT(json_integer_value(json_object_get(j, "tasks")), 4);
	T_EQ_STR(json_string_value(json_object_get(j, "gpus_per_task")),
		 "a100:2");
	T_EXPECT(json_object_get(j, "gres") == NULL);
	T_EXPECT(json_object_get(j, "memory_per_node") == NULL);
	/* 2048 MB over 4 CPUs per task */
	T_EQ_INT(json_integer_value(json_object_get(j, "memory_per_cpu")), 512);
	json_decref(b);
	mer_agent_slurm_ops.close(inst);

	/* a wrong token: the server says 401, the adapter says so */
	free(cfg->token);
	cfg->token = strdup("nope");
	inst = NULL;
	T_OK(mer_agent_slurm_ops.open(cfg, &inst, err, sizeof(err)));
	T_EQ_INT(mer_agent_slurm_ops.probe(inst, cap, err, sizeof(err)),
		 MER_EREMOTE);
	T_CONTAINS(err, "HTTP 401");
	T_EXPECT(strstr(err, "nope") == NULL);
	mer_agent_slurm_ops.close(inst);

	/* scheduler.token_file when no token is inline */
	char tf[600];
	snprintf(tf, sizeof(tf), "%s/token", e.dir);
	FILE *f = fopen(tf, "w");
	T_ASSERT(f != NULL);
	fputs("jwt-abc\n", f);
	fclose(f);
	free(cfg->token);
	cfg->token = NULL;
	free(cfg->token_file);
	cfg->token_file = strdup(tf);
	inst = NULL;
	pthread_mutex_lock(&fx.lock);
	fx.bad_auth = 0;
	pthread_mutex_unlock(&fx.lock);
	T_OK(mer_agent_slurm_ops.open(cfg, &inst, err, sizeof(err)));
	memset(cap, 0, sizeof(*cap));
	T_OK(mer_agent_slurm_ops.probe(inst, cap, err, sizeof(err)));
	T_EQ_INT(fx.bad_auth, 0);
	mer_agent_slurm_ops.close(inst);
	/* an untested version only when asked for, and well-formed */
	free(cfg->api_version);
	cfg->api_version = strdup("v0.0.4x");
	inst = NULL;
	T_EQ_INT(mer_agent_slurm_ops.open(cfg, &inst, err, sizeof(err)),
		 MER_EINVAL);
out:
	mer_agent_stage_clear(&st);
	t_fxsite_stop(&e);
	json_decref(fx.submitted);
	fx.submitted = NULL;
	free(cap);
}

static const struct t_case cases[] = {
    {"over_http", test_over_http},
};

T_MAIN("agent_slurmrest", cases)
