/*
 * The Kubernetes adapter against a fixture API server (common/http.h) that
 * answers with bodies shaped like the real API (tests/fixtures/k8s/, from
 * the Kubernetes API reference: NodeList, PodList, batch/v1 Job, Volcano
 * batch.volcano.sh/v1alpha1 Job, Status) and records what it receives.
 * Checks the computed capacity and summary, the Job bodies submitted (plain
 * and Volcano gang), status from conditions, delete with Background
 * propagation, and bearer-token auth.
 */
#include "common/err.h"
#include "common/http.h"
#include "common/json.h"
#include "policy/fed.h"
#include "site-agent/adapter.h"
#include "site-agent/config.h"
#include "site-agent/kutil.h"
#include "site-agent/runner.h"
#include "tests/harness.h"
#include "tests/lib/fixture_site.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TOKEN "k8s-test-token"

static struct {
	pthread_mutex_t lock;
	json_t *nodes, *pods, *statuses;
	json_t *jobs;		/* name -> created object */
	struct t_reqlog log;	/* with the Authorization header */
	const char *job_status; /* key in statuses */
	int fail_pods;		/* answer /api/v1/pods with 500 */
} fx = {.lock = PTHREAD_MUTEX_INITIALIZER, .log = T_REQLOG_INITIALIZER};

/* A Kubernetes Status object, as the API server sends errors. */
static int status_err(struct mer_http_res *res, int code, const char *reason,
		      const char *msg)
{
	return mer_http_res_json_new(
	    res, code,
	    json_pack("{s:s, s:s, s:{}, s:s, s:s, s:s, s:i}", "kind", "Status",
		      "apiVersion", "v1", "metadata", "status", "Failure",
		      "message", msg, "reason", reason, "code", code));
}

static int authed(struct mer_http_req *req, struct mer_http_res *res)
{
	const char *a = mer_http_req_header(req, "Authorization");

	t_reqlog_add(&fx.log, req, "Authorization");
	if (!a || strcmp(a, "Bearer " TOKEN) != 0) {
		status_err(res, 401, "Unauthorized", "Unauthorized");
		return 0;
	}
	return 1;
}

static int h_version(struct mer_http_req *req, struct mer_http_res *res,
		     void *arg)
{
	(void)arg;
	if (!authed(req, res))
		return 0;
	return mer_http_res_json_new(
	    res, 200,
	    json_pack("{s:s, s:s, s:s, s:s, s:s}", "major", "1", "minor", "28",
		      "gitVersion", "v1.28.3", "goVersion", "go1.20.10",
		      "platform", "linux/amd64"));
}

static int h_nodes(struct mer_http_req *req, struct mer_http_res *res,
		   void *arg)
{
	(void)arg;
	if (!authed(req, res))
		return 0;
	return mer_http_res_json(res, 200, fx.nodes);
}

/* Honors the field selector the way the API server does for
 * status.phase!=X terms, so the test sees whether the agent asks. */
static int h_pods(struct mer_http_req *req, struct mer_http_res *res, void *arg)
{
	const char *sel = mer_http_req_query(req, "fieldSelector");
	json_t *out, *items;
	size_t i;

	(void)arg;
	if (!authed(req, res))
		return 0;
	if (fx.fail_pods == 1)
		return mer_http_res_text(res, 500, "text/plain", "oops", 4);
	if (fx.fail_pods == 2) /* a 200 whose body is cut short */
		return mer_http_res_text(res, 200, "application/json",
					 "{\"kind\": \"PodList\", \"items\": [",
					 29);
	out = json_deep_copy(fx.pods);
	items = json_object_get(out, "items");
	for (i = json_array_size(items); i-- > 0;) {
		const char *ph = json_string_value(json_object_get(
		    json_object_get(json_array_get(items, i), "status"),
		    "phase"));
		char term[64];
		snprintf(term, sizeof(term), "status.phase!=%s", ph);
		if (sel && strstr(sel, term))
			json_array_remove(items, i);
	}
	return mer_http_res_json_new(res, 200, out);
}

static int h_job_create(struct mer_http_req *req, struct mer_http_res *res,
			void *arg)
{
	json_t *body = mer_http_req_json(req), *obj;
	const char *name;
	const char *want = arg;

	if (!authed(req, res))
		return 0;
	name = json_string_value(
	    json_object_get(json_object_get(body, "metadata"), "name"));
	if (!name ||
	    strcmp(json_string_value(json_object_get(body, "apiVersion")),
		   want) != 0)
		return status_err(res, 400, "BadRequest", "bad object");
	pthread_mutex_lock(&fx.lock);
	if (json_object_get(fx.jobs, name)) {
		pthread_mutex_unlock(&fx.lock);
		return status_err(res, 409, "AlreadyExists",
				  "jobs.batch already exists");
	}
	obj = json_deep_copy(body);
	json_object_set_new(json_object_get(obj, "metadata"), "namespace",
			    json_string(mer_http_req_param(req, "ns")));
	json_object_set_new(
	    json_object_get(obj, "metadata"), "uid",
	    json_string("0f9e8d7c-6b5a-4c3d-9e2f-1a0b9c8d7e6f"));
	json_object_set(fx.jobs, name, obj);
	pthread_mutex_unlock(&fx.lock);
	return mer_http_res_json_new(res, 201, obj);
}

static int h_job_get(struct mer_http_req *req, struct mer_http_res *res,
		     void *arg)
{
	const char *name = mer_http_req_param(req, "name");
	json_t *obj;

	(void)arg;
	if (!authed(req, res))
		return 0;
	pthread_mutex_lock(&fx.lock);
	obj = json_deep_copy(json_object_get(fx.jobs, name));
	pthread_mutex_unlock(&fx.lock);
	if (!obj)
		return status_err(res, 404, "NotFound", "jobs.batch not found");
	if (strcmp(json_string_value(json_object_get(obj, "apiVersion")),
		   "batch/v1") == 0)
		json_object_set(obj, "status",
				json_object_get(fx.statuses, fx.job_status));
	else
		json_object_set_new(obj, "status",
				    json_pack("{s:{s:s}, s:i}", "state",
					      "phase", "Running", "running",
					      2));
	return mer_http_res_json_new(res, 200, obj);
}

static int h_job_delete(struct mer_http_req *req, struct mer_http_res *res,
			void *arg)
{
	const char *name = mer_http_req_param(req, "name");
	int found;

	(void)arg;
	if (!authed(req, res))
		return 0;
	pthread_mutex_lock(&fx.lock);
	found = json_object_get(fx.jobs, name) != NULL;
	json_object_del(fx.jobs, name);
	pthread_mutex_unlock(&fx.lock);
	if (!found)
		return status_err(res, 404, "NotFound", "not found");
	return mer_http_res_json_new(
	    res, 200,
	    json_pack("{s:s, s:s, s:{}, s:s, s:{s:s, s:s, s:s}}", "kind",
		      "Status", "apiVersion", "v1", "metadata", "status",
		      "Success", "details", "name", name, "group", "batch",
		      "kind", "jobs"));
}

static int h_ns_pods(struct mer_http_req *req, struct mer_http_res *res,
		     void *arg)
{
	(void)arg;
	if (!authed(req, res))
		return 0;
	/* The pod of a failed Job: container exited 3. */
	return mer_http_res_json_new(
	    res, 200,
	    json_pack("{s:s, s:s, s:[{s:{s:s}, s:{s:s, s:[{s:s, s:{s:{s:i, "
		      "s:s}}}]}}]}",
		      "kind", "PodList", "apiVersion", "v1", "items",
		      "metadata", "name", "mer-x-0", "status", "phase",
		      "Failed", "containerStatuses", "name", "stage", "state",
		      "terminated", "exitCode", 3, "reason", "Error"));
}

static const struct mer_http_route routes[] = {
    {"GET", "/version", h_version, NULL, 0},
    {"GET", "/api/v1/nodes", h_nodes, NULL, 0},
    {"GET", "/api/v1/pods", h_pods, NULL, 0},
    {"GET", "/api/v1/namespaces/{ns}/pods", h_ns_pods, NULL, 0},
    {"POST", "/apis/batch/v1/namespaces/{ns}/jobs", h_job_create, "batch/v1",
     MER_HTTP_JSON_BODY},
    {"GET", "/apis/batch/v1/namespaces/{ns}/jobs/{name}", h_job_get, NULL, 0},
    {"DELETE", "/apis/batch/v1/namespaces/{ns}/jobs/{name}", h_job_delete, NULL,
     MER_HTTP_JSON_OPTIONAL},
    {"POST", "/apis/batch.volcano.sh/v1alpha1/namespaces/{ns}/jobs",
     h_job_create, "batch.volcano.sh/v1alpha1", MER_HTTP_JSON_BODY},
    {"GET", "/apis/batch.volcano.sh/v1alpha1/namespaces/{ns}/jobs/{name}",
     h_job_get, NULL, 0},
    {"DELETE", "/apis/batch.volcano.sh/v1alpha1/namespaces/{ns}/jobs/{name}",
     h_job_delete, NULL, MER_HTTP_JSON_OPTIONAL},
};

static void env_down(struct t_fxsite *e)
{
	t_fxsite_stop(e);
	json_decref(fx.nodes);
	json_decref(fx.pods);
	json_decref(fx.statuses);
	json_decref(fx.jobs);
	t_reqlog_free(&fx.log);
	fx.nodes = fx.pods = fx.statuses = fx.jobs = NULL;
}

/* Starts the fixture and loads the agent's config; on failure the case
 * has failed and nothing is left to stop. */
static int env_up(struct t_fxsite *e, int volcano)
{
	int rv;

	memset(e, 0, sizeof(*e));
	fx.nodes = t_fixture_json("k8s/nodes.json");
	fx.pods = t_fixture_json("k8s/pods.json");
	fx.statuses = t_fixture_json("k8s/job-status.json");
	fx.jobs = json_object();
	t_reqlog_reset(&fx.log);
	fx.job_status = "running";
	fx.fail_pods = 0;
	rv = !fx.nodes || !fx.pods || !fx.statuses ? MER_EIO : 0;
	if (!rv)
		rv = t_fxsite_start(e, "agent-k8s", routes,
				    sizeof(routes) / sizeof(routes[0]));
	if (!rv)
		rv = t_fxsite_cfg(
		    e, "k8s.json",
		    "{\"site\": {\"name\": \"k8s-a\", \"region\": "
		    "\"us-west-2\"},"
		    " \"scheduler\": {\"kind\": \"kubernetes\", \"url\": "
		    "\"http://127.0.0.1:%d\", \"token\": \"" TOKEN "\","
		    " \"namespace\": \"meridian\", \"volcano\": %s,"
		    " \"queue\": \"fed\", \"timeout\": \"5s\"},"
		    " \"prices\": {\"gpu_hour\": {\"a100\": 3.1}},"
		    " \"agent\": {\"state_file\": \"%s/state\"}}",
		    t_fxsite_port(e), volcano ? "true" : "false", e->dir);
	if (rv) {
		t_fail(__FILE__, __LINE__, "fixture server did not start: %s",
		       t_strerror(rv));
		env_down(e);
	}
	return rv;
}

static const struct mer_agent_res *find_res(const struct mer_agent_capacity *c,
					    const char *pool, const char *kind)
{
	for (size_t i = 0; i < c->npools; i++)
		if (!strcmp(c->pools[i].name, pool))
			return mer_agent_pool_find(&c->pools[i], kind);
	return NULL;
}

/* The last request recorded with this method whose path contains part. */
static json_t *received(const char *method, const char *part)
{
	return t_reqlog_last(&fx.log, method, part, T_PATH_HAS);
}

static json_t *received_body(const char *method, const char *part)
{
	return t_reqlog_last_body(&fx.log, method, part, T_PATH_HAS);
}

static void test_capacity(void)
{
	struct t_fxsite e;
	void *inst = NULL;
	struct mer_agent_capacity *cap = calloc(1, sizeof(*cap));
	const struct mer_agent_res *r;
	char err[512] = "";

	T_ASSERT(cap);
	if (env_up(&e, 0))
		goto out_free;
	T_OK(mer_agent_k8s_ops.open(&e.cfg, &inst, err, sizeof(err)));
	int rv = mer_agent_k8s_ops.probe(inst, cap, err, sizeof(err));
	T_EQ_INT(rv, 0);
	if (rv)
		fprintf(stderr, "probe: %s\n", err);
	T_EQ_STR(cap->version, "v1.28.3");
	T_EQ_INT(cap->npools, 2);
	/* gpu pool: gpu-a ready (95.5 cpu, 8 a100), gpu-b cordoned */
	T_ASSERT((r = find_res(cap, "gpu", "gpu:a100")) != NULL);
	T_EXPECT(r->total == 16);
	T_EXPECT(r->allocatable == 8);
	T_EXPECT(r->free == 5); /* trainer 2 + infer 1 (limits only) */
	T_EXPECT(r->pending == 8);
	T_ASSERT((r = find_res(cap, "gpu", "cpu")) != NULL);
	T_EXPECT(r->total == 191);
	T_EXPECT(r->allocatable == 95.5);
	T_EXPECT(r->free == 83); /* 8 + 0.5 + 4; the Succeeded pod is out */
	T_EXPECT(r->pending == 32);
	T_ASSERT((r = find_res(cap, "gpu", "memory_mb")) != NULL);
	T_EXPECT(r->allocatable == 1024000);
	T_EXPECT(r->free == 1024000 - 32768 - 512 - 16384);
	/* cpu pool: cpu-b not Ready; etl-0's init container (6) counts */
	T_ASSERT((r = find_res(cap, "cpu", "cpu")) != NULL);
	T_EXPECT(r->total == 32);
	T_EXPECT(r->allocatable == 16);
	T_EXPECT(r->free == 10);
	T_ASSERT((r = find_res(cap, "cpu", "memory_mb")) != NULL);
	T_EXPECT(r->free == 65536 - 8192);
	/* the pod list asked for non-terminated pods only, with the token */
	json_t *rec = received("GET", "/api/v1/pods");
	T_ASSERT(rec != NULL);
	T_CONTAINS(json_string_value(json_object_get(
		       json_object_get(rec, "query"), "fieldSelector")),
		   "status.phase!=Succeeded");
	T_EQ_STR(json_string_value(json_object_get(rec, "auth")),
		 "Bearer " TOKEN);
	json_decref(rec);
	mer_agent_k8s_ops.close(inst);
	env_down(&e);
out_free:
	free(cap);
}

static void test_summary_valid_for_fed(void)
{
	struct t_fxsite e;
	struct mer_agent *a = NULL;
	json_t *s = NULL;
	char err[512] = "";

	if (env_up(&e, 0))
		return;
	T_OK(mer_agent_open(&e.cfg, &a, err, sizeof(err)));
	T_OK(mer_agent_probe(a));
	T_OK(mer_agent_summary(a, &s));
	T_EQ_STR(json_string_value(
		     json_object_get(json_object_get(s, "site"), "scheduler")),
		 "kubernetes");
	T_EQ_STR(json_string_value(json_object_get(json_object_get(s, "status"),
						   "scheduler_version")),
		 "v1.28.3");
	T_OK(mer_site_validate(json_object_get(s, "site"), NULL, err,
			       sizeof(err)));
	json_decref(s);
	/* A malformed reply: logged, the site goes down, the agent lives. */
	fx.fail_pods = 1;
	mer_agent_probe_now(a);
	T_EQ_INT(mer_agent_probe(a), MER_EREMOTE);
	T_CONTAINS(mer_agent_unhealthy_reason(a), "HTTP 500");
	fx.fail_pods = 2;
	mer_agent_probe_now(a);
	T_EQ_INT(mer_agent_probe(a), MER_EPARSE);
	T_CONTAINS(mer_agent_unhealthy_reason(a), "malformed reply");
	fx.fail_pods = 0;
	mer_agent_probe_now(a);
	T_OK(mer_agent_probe(a));
	T_EQ_STR(mer_agent_unhealthy_reason(a), "");
	mer_agent_close(a);
	env_down(&e);
}

static void test_batch_job(void)
{
	struct t_fxsite e;
	void *inst = NULL;
	struct mer_agent_capacity *cap = calloc(1, sizeof(*cap));
	struct mer_agent_stage st = {0};
	struct mer_agent_stage_status ss;
	char err[512] = "", job[128], job2[128];

	T_ASSERT(cap);
	if (env_up(&e, 0))
		goto out_free;
	T_OK(mer_agent_k8s_ops.open(&e.cfg, &inst, err, sizeof(err)));
	T_OK(mer_agent_k8s_ops.probe(inst, cap, err, sizeof(err)));
	snprintf(st.id, sizeof(st.id), "job-42/train");
	snprintf(st.pool, sizeof(st.pool), "gpu");
	snprintf(st.gpu_model, sizeof(st.gpu_model), "a100");
	st.command = strdup("python train.py --epochs 3");
	st.image = strdup("pytorch/pytorch:2.1.0-cuda12.1-cudnn8-runtime");
	st.cpus = 8;
	st.memory_mb = 65536;
	st.gpus = 2;
	st.time_limit_s = 3600;
	T_OK(mer_agent_k8s_ops.submit(inst, &st, job, sizeof(job), err,
				      sizeof(err)));
	T_CONTAINS(job, "batch/mer-job-42-train-");

	json_t *b = received_body("POST", "/apis/batch/v1/namespaces/meridian/"
					  "jobs");
	T_ASSERT(b != NULL);
	T_EQ_STR(json_string_value(json_object_get(b, "kind")), "Job");
	T_EQ_STR(json_string_value(json_object_get(b, "apiVersion")),
		 "batch/v1");
	json_t *md = json_object_get(b, "metadata");
	T_EQ_STR(
	    json_string_value(json_object_get(
		json_object_get(md, "annotations"), "meridian.io/stage-id")),
	    "job-42/train");
	json_t *spec = json_object_get(b, "spec");
	T_EQ_INT(json_integer_value(json_object_get(spec, "backoffLimit")), 0);
	T_EQ_INT(
	    json_integer_value(json_object_get(spec, "activeDeadlineSeconds")),
	    3600);
	json_t *pod =
	    json_object_get(json_object_get(spec, "template"), "spec");
	T_EQ_STR(json_string_value(json_object_get(pod, "restartPolicy")),
		 "Never");
	json_t *sel = json_object_get(pod, "nodeSelector");
	T_EQ_STR(json_string_value(
		     json_object_get(sel, "cloud.google.com/gke-nodepool")),
		 "gpu");
	T_EQ_STR(
	    json_string_value(json_object_get(sel, "nvidia.com/gpu.product")),
	    "NVIDIA-A100-SXM4-80GB");
	json_t *c = json_array_get(json_object_get(pod, "containers"), 0);
	T_EQ_STR(json_string_value(json_object_get(c, "image")),
		 "pytorch/pytorch:2.1.0-cuda12.1-cudnn8-runtime");
	T_EQ_STR(
	    json_string_value(json_array_get(json_object_get(c, "command"), 2)),
	    "python train.py --epochs 3");
	json_t *rq =
	    json_object_get(json_object_get(c, "resources"), "requests");
	json_t *lim =
	    json_object_get(json_object_get(c, "resources"), "limits");
	T_EQ_STR(json_string_value(json_object_get(rq, "cpu")), "8");
	T_EQ_STR(json_string_value(json_object_get(rq, "memory")), "65536Mi");
	T_EQ_STR(json_string_value(json_object_get(rq, "nvidia.com/gpu")), "2");
	T_EQ_STR(json_string_value(json_object_get(lim, "nvidia.com/gpu")),
		 "2");
	json_decref(b);

	/* Status from the Job's conditions. */
	fx.job_status = "queued";
	T_OK(mer_agent_k8s_ops.status(inst, job, &ss, err, sizeof(err)));
	T_EQ_INT(ss.state, MER_AGENT_STAGE_PENDING);
	fx.job_status = "running";
	T_OK(mer_agent_k8s_ops.status(inst, job, &ss, err, sizeof(err)));
	T_EQ_INT(ss.state, MER_AGENT_STAGE_RUNNING);
	fx.job_status = "complete";
	T_OK(mer_agent_k8s_ops.status(inst, job, &ss, err, sizeof(err)));
	T_EQ_INT(ss.state, MER_AGENT_STAGE_SUCCEEDED);
	T_EQ_INT(ss.exit_code, 0);
	fx.job_status = "failed";
	T_OK(mer_agent_k8s_ops.status(inst, job, &ss, err, sizeof(err)));
	T_EQ_INT(ss.state, MER_AGENT_STAGE_FAILED);
	T_EQ_INT(ss.exit_code, 3);
	T_EQ_STR(ss.reason, "BackoffLimitExceeded");

	/* Found again by stage id; a second submit is refused (409). */
	T_OK(mer_agent_k8s_ops.find(inst, "job-42/train", job2, sizeof(job2),
				    err, sizeof(err)));
	T_EQ_STR(job2, job);
	T_EQ_INT(mer_agent_k8s_ops.submit(inst, &st, job2, sizeof(job2), err,
					  sizeof(err)),
		 MER_EEXIST);

	/* Cancel: DELETE with propagationPolicy Background. */
	T_OK(mer_agent_k8s_ops.cancel(inst, job, err, sizeof(err)));
	b = received_body("DELETE", "/jobs/mer-job-42-train-");
	T_ASSERT(b != NULL);
	T_EQ_STR(json_string_value(json_object_get(b, "propagationPolicy")),
		 "Background");
	T_EQ_STR(json_string_value(json_object_get(b, "kind")),
		 "DeleteOptions");
	json_decref(b);
	T_EQ_INT(mer_agent_k8s_ops.status(inst, job, &ss, err, sizeof(err)),
		 MER_ENOTFOUND);
	/* cancelling again is not an error */
	T_OK(mer_agent_k8s_ops.cancel(inst, job, err, sizeof(err)));
	mer_agent_k8s_ops.close(inst);
	env_down(&e);
out_free:
	mer_agent_stage_clear(&st);
	free(cap);
}

/* Review finding 3: a submit before any probe (a reconcile after restart)
 * must still carry the selectors; an unknown pool or model is refused
 * rather than run anywhere. */
static void test_selectors_without_probe(void)
{
	struct t_fxsite e;
	void *inst = NULL;
	struct mer_agent_stage st = {0};
	char err[512] = "", job[128];

	if (env_up(&e, 0))
		return;
	T_OK(mer_agent_k8s_ops.open(&e.cfg, &inst, err, sizeof(err)));
	snprintf(st.id, sizeof(st.id), "job-43/train#1");
	snprintf(st.pool, sizeof(st.pool), "gpu");
	snprintf(st.gpu_model, sizeof(st.gpu_model), "a100");
	st.command = strdup("python train.py");
	st.gpus = 1;
	T_OK(mer_agent_k8s_ops.submit(inst, &st, job, sizeof(job), err,
				      sizeof(err)));
	json_t *b = received_body("POST", "/apis/batch/v1/namespaces/meridian/"
					  "jobs");
	T_ASSERT(b != NULL);
	json_t *sel =
	    mer_agent_jget(b, "spec", "template", "spec", "nodeSelector", NULL);
	T_EQ_STR(json_string_value(
		     json_object_get(sel, "cloud.google.com/gke-nodepool")),
		 "gpu");
	T_EQ_STR(
	    json_string_value(json_object_get(sel, "nvidia.com/gpu.product")),
	    "NVIDIA-A100-SXM4-80GB");
	json_decref(b);
	snprintf(st.id, sizeof(st.id), "job-43/other");
	snprintf(st.gpu_model, sizeof(st.gpu_model), "mi300");
	T_EQ_INT(mer_agent_k8s_ops.submit(inst, &st, job, sizeof(job), err,
					  sizeof(err)),
		 MER_ENOTFOUND);
	T_CONTAINS(err, "mi300");
	snprintf(st.gpu_model, sizeof(st.gpu_model), "a100");
	snprintf(st.pool, sizeof(st.pool), "nopool");
	T_EQ_INT(mer_agent_k8s_ops.submit(inst, &st, job, sizeof(job), err,
					  sizeof(err)),
		 MER_ENOTFOUND);
	T_CONTAINS(err, "nopool");
	mer_agent_k8s_ops.close(inst);
	mer_agent_stage_clear(&st);
	env_down(&e);
}

static void test_volcano_gang(void)
{
	struct t_fxsite e;
	void *inst = NULL;
	struct mer_agent_stage st = {0};
	struct mer_agent_stage_status ss;
	char err[512] = "", job[128];

	if (env_up(&e, 1))
		return;
	T_OK(mer_agent_k8s_ops.open(&e.cfg, &inst, err, sizeof(err)));
	snprintf(st.id, sizeof(st.id), "job-7/pretrain");
	st.command = strdup("torchrun train.py");
	st.image = strdup("pytorch:2.1");
	st.cpus = 16;
	st.gpus = 8;
	st.replicas = 4;
	st.gang = 1;
	T_OK(mer_agent_k8s_ops.submit(inst, &st, job, sizeof(job), err,
				      sizeof(err)));
	T_CONTAINS(job, "volcano/mer-job-7-pretrain-");
	json_t *b = received_body("POST", "/apis/batch.volcano.sh/v1alpha1/"
					  "namespaces/meridian/jobs");
	T_ASSERT(b != NULL);
	T_EQ_STR(json_string_value(json_object_get(b, "apiVersion")),
		 "batch.volcano.sh/v1alpha1");
	T_EQ_STR(json_string_value(json_object_get(b, "kind")), "Job");
	json_t *spec = json_object_get(b, "spec");
	T_EQ_INT(json_integer_value(json_object_get(spec, "minAvailable")), 4);
	T_EQ_STR(json_string_value(json_object_get(spec, "schedulerName")),
		 "volcano");
	T_EQ_STR(json_string_value(json_object_get(spec, "queue")), "fed");
	json_t *task = json_array_get(json_object_get(spec, "tasks"), 0);
	T_EQ_INT(json_integer_value(json_object_get(task, "replicas")), 4);
	json_t *c = json_array_get(
	    json_object_get(
		json_object_get(json_object_get(task, "template"), "spec"),
		"containers"),
	    0);
	T_EQ_STR(json_string_value(json_object_get(
		     json_object_get(json_object_get(c, "resources"), "limits"),
		     "nvidia.com/gpu")),
		 "8");
	json_decref(b);
	T_OK(mer_agent_k8s_ops.status(inst, job, &ss, err, sizeof(err)));
	T_EQ_INT(ss.state, MER_AGENT_STAGE_RUNNING);
	T_OK(mer_agent_k8s_ops.cancel(inst, job, err, sizeof(err)));
	json_t *rec = received("DELETE", "batch.volcano.sh");
	T_ASSERT(rec != NULL);
	json_decref(rec);

	/* A stage that is not a gang is a plain batch/v1 Job even here. */
	st.gang = 0;
	snprintf(st.id, sizeof(st.id), "job-7/eval");
	T_OK(mer_agent_k8s_ops.submit(inst, &st, job, sizeof(job), err,
				      sizeof(err)));
	T_CONTAINS(job, "batch/");
	mer_agent_k8s_ops.close(inst);
	mer_agent_stage_clear(&st);
	env_down(&e);
}

static void test_bad_token(void)
{
	struct t_fxsite e;
	void *inst = NULL;
	struct mer_agent_capacity *cap = calloc(1, sizeof(*cap));
	char err[512] = "";

	T_ASSERT(cap);
	if (env_up(&e, 0))
		goto out_free;
	free(e.cfg.token);
	e.cfg.token = strdup("wrong");
	T_OK(mer_agent_k8s_ops.open(&e.cfg, &inst, err, sizeof(err)));
	T_EQ_INT(mer_agent_k8s_ops.probe(inst, cap, err, sizeof(err)),
		 MER_EREMOTE);
	T_CONTAINS(err, "HTTP 401");
	T_CONTAINS(err, "Unauthorized");
	mer_agent_k8s_ops.close(inst);
	env_down(&e);
out_free:
	free(cap);
}

static void test_unreachable(void)
{
	struct t_fxsite e;
	struct mer_agent *a = NULL;
	json_t *s = NULL;
	char err[512] = "";

	if (env_up(&e, 0))
		return;
	mer_http_server_stop(e.srv);
	T_OK(mer_agent_open(&e.cfg, &a, err, sizeof(err)));
	T_EQ_INT(mer_agent_probe(a), MER_EUNREACHABLE);
	T_OK(mer_agent_summary(a, &s));
	T_EQ_STR(json_string_value(
		     json_object_get(json_object_get(s, "site"), "health")),
		 "down");
	T_CONTAINS(json_string_value(json_object_get(
		       json_object_get(s, "status"), "health_reason")),
		   "unreachable");
	if (mer_site_validate(json_object_get(s, "site"), NULL, err,
			      sizeof(err)) != 0)
		t_fail(__FILE__, __LINE__, "fed.c refused: %s", err);
	json_decref(s);
	mer_agent_close(a);
	env_down(&e);
}

static void test_quantities_and_models(void)
{
	double x;
	json_t *v;
	char m[64];

	struct {
		const char *s;
		double want;
	} q[] = {{"500m", 0.5},		{"64", 64},
		 {"1Gi", 1073741824.0}, {"1048576Ki", 1073741824.0},
		 {"2k", 2000},		{"1.5", 1.5},
		 {"1e3", 1000}};
	for (size_t i = 0; i < sizeof(q) / sizeof(q[0]); i++) {
		v = json_string(q[i].s);
		T_OK(mer_agent_quantity(v, &x));
		T_EXPECT(x == q[i].want);
		json_decref(v);
	}
	v = json_string("12Qi");
	T_EQ_INT(mer_agent_quantity(v, &x), MER_EPARSE);
	json_decref(v);
	mer_agent_gpu_model("NVIDIA-A100-SXM4-80GB", m, sizeof(m));
	T_EQ_STR(m, "a100");
	mer_agent_gpu_model("Tesla-T4", m, sizeof(m));
	T_EQ_STR(m, "t4");
	mer_agent_gpu_model("NVIDIA-H100-80GB-HBM3", m, sizeof(m));
	T_EQ_STR(m, "h100");
	mer_agent_gpu_model("NVIDIA-A10", m, sizeof(m));
	T_EQ_STR(m, "a10");
	mer_agent_gpu_model("Weird GPU 9000", m, sizeof(m));
	T_EQ_STR(m, "weird-gpu-9000");
}

static const struct t_case cases[] = {
    {"quantities_and_models", test_quantities_and_models},
    {"capacity", test_capacity},
    {"summary_valid_for_fed", test_summary_valid_for_fed},
    {"batch_job", test_batch_job},
    {"volcano_gang", test_volcano_gang},
    {"selectors_without_probe", test_selectors_without_probe},
    {"bad_token", test_bad_token},
    {"unreachable", test_unreachable},
};

T_MAIN("agent_k8s", cases)
