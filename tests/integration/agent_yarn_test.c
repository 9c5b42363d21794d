/*
 * The YARN adapter against a fixture ResourceManager (common/http.h) that
 * answers /ws/v1/cluster/{info,metrics,nodes,scheduler} with bodies shaped
 * like the RM REST API (tests/fixtures/yarn/, Capacity Scheduler with
 * nested queues, yarn.io/gpu resource information), implements
 * new-application, apps, app state and kill, and records what it receives.
 */
#include "common/err.h"
#include "common/http.h"
#include "common/json.h"
#include "policy/fed.h"
#include "site-agent/adapter.h"
#include "site-agent/config.h"
#include "site-agent/runner.h"
#include "tests/harness.h"
#include "tests/lib/proc.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static struct {
	pthread_mutex_t lock;
	json_t *info, *metrics, *nodes, *sched;
	json_t *apps;	  /* id -> {"body": submitted, "state", "final"} */
	json_t *received; /* [{method, path, query, body}] */
	int next;
} fx = {.lock = PTHREAD_MUTEX_INITIALIZER};

static json_t *load_fixture(const char *name)
{
	char path[1024], err[512];
	const char *top = getenv("MERIDIAN_TOP");
	struct mer_json_doc doc = {0};
	json_t *r;

	snprintf(path, sizeof(path), "%s/tests/fixtures/yarn/%s",
		 top ? top : ".", name);
	if (mer_json_doc_load(path, 0, 0, &doc, err, sizeof(err))) {
		fprintf(stderr, "%s\n", err);
		return NULL;
	}
	r = json_incref(doc.root);
	mer_json_doc_free(&doc);
	return r;
}

static void record(struct mer_http_req *req)
{
	size_t len = 0;
	const char *body = mer_http_req_body(req, &len);
	json_t *q = json_object();

	for (size_t i = 0; i < mer_http_req_query_count(req); i++) {
		const char *n, *v;
		if (mer_http_req_query_at(req, i, &n, &v) == 0)
			json_object_set_new(q, n, json_string(v));
	}
	pthread_mutex_lock(&fx.lock);
	json_array_append_new(
	    fx.received,
	    json_pack("{s:s, s:s, s:o, s:s#}", "method",
		      mer_http_req_method(req), "path", mer_http_req_path(req),
		      "query", q, "body", body ? body : "", body ? len : 0));
	pthread_mutex_unlock(&fx.lock);
}

/* The RM's error shape. */
static int rm_err(struct mer_http_res *res, int code, const char *ex,
		  const char *msg)
{
	return mer_http_res_json_new(
	    res, code,
	    json_pack("{s:{s:s, s:s, s:s}}", "RemoteException", "exception", ex,
		      "message", msg, "javaClassName",
		      "org.apache.hadoop.yarn.webapp.NotFoundException"));
}

static int h_fixed(struct mer_http_req *req, struct mer_http_res *res,
		   void *arg)
{
	record(req);
	return mer_http_res_json(res, 200, *(json_t **)arg);
}

static int h_new_app(struct mer_http_req *req, struct mer_http_res *res,
		     void *arg)
{
	char id[64];

	(void)arg;
	record(req);
	pthread_mutex_lock(&fx.lock);
	snprintf(id, sizeof(id), "application_1700000000000_%04d", ++fx.next);
	pthread_mutex_unlock(&fx.lock);
	return mer_http_res_json_new(res, 200,
				     json_pack("{s:s, s:{s:i, s:i}}",
					       "application-id", id,
					       "maximum-resource-capability",
					       "memory", 131072, "vCores", 32));
}

static int h_submit(struct mer_http_req *req, struct mer_http_res *res,
		    void *arg)
{
	json_t *b = mer_http_req_json(req);
	const char *id =
	    json_string_value(json_object_get(b, "application-id"));

	(void)arg;
	record(req);
	if (!id)
		return rm_err(res, 400, "BadRequestException",
			      "application-id missing");
	pthread_mutex_lock(&fx.lock);
	json_object_set_new(fx.apps, id,
			    json_pack("{s:O, s:s, s:s, s:s}", "body", b,
				      "state", "ACCEPTED", "final", "UNDEFINED",
				      "diag", ""));
	pthread_mutex_unlock(&fx.lock);
	mer_http_res_header(res, "Location",
			    "http://rm:8088/ws/v1/cluster/apps/x");
	mer_http_res_status(res, 202);
	return 0;
}

static json_t *app_json(const char *id, json_t *a)
{
	json_t *b = json_object_get(a, "body");
	return json_pack(
	    "{s:s, s:s, s:s, s:s, s:s, s:s, s:f, s:s, s:s, s:s, s:I, "
	    "s:[s]}",
	    "id", id, "user", "dr.who", "name",
	    json_string_value(json_object_get(b, "application-name")), "queue",
	    json_string_value(json_object_get(b, "queue")), "state",
	    json_string_value(json_object_get(a, "state")), "finalStatus",
	    json_string_value(json_object_get(a, "final")), "progress", 0.0,
	    "trackingUI", "UNASSIGNED", "diagnostics",
	    json_string_value(json_object_get(a, "diag")), "applicationType",
	    json_string_value(json_object_get(b, "application-type")),
	    "startedTime", (json_int_t)1701338400000, "applicationTags",
	    json_string_value(json_array_get(
		json_object_get(json_object_get(b, "application-tags"), "tag"),
		0)));
}

static int h_app(struct mer_http_req *req, struct mer_http_res *res, void *arg)
{
	const char *id = mer_http_req_param(req, "id");
	json_t *a, *out = NULL;

	(void)arg;
	record(req);
	pthread_mutex_lock(&fx.lock);
	if ((a = json_object_get(fx.apps, id)))
		out = json_pack("{s:o}", "app", app_json(id, a));
	pthread_mutex_unlock(&fx.lock);
	if (!out)
		return rm_err(res, 404, "NotFoundException",
			      "java.lang.Exception: app with id not found");
	return mer_http_res_json_new(res, 200, out);
}

static int h_apps(struct mer_http_req *req, struct mer_http_res *res, void *arg)
{
	const char *tag = mer_http_req_query(req, "applicationTags");
	const char *type = mer_http_req_query(req, "applicationTypes");
	const char *id;
	json_t *a, *list = json_array();

	(void)arg;
	record(req);
	pthread_mutex_lock(&fx.lock);
	json_object_foreach(fx.apps, id, a)
	{
		json_t *j = app_json(id, a);
		const char *t = json_string_value(
		    json_array_get(json_object_get(j, "applicationTags"), 0));
		if ((!tag || (t && strcmp(t, tag) == 0)) &&
		    (!type || !strcmp(type, json_string_value(json_object_get(
						j, "applicationType")))))
			json_array_append_new(list, j);
		else
			json_decref(j);
	}
	pthread_mutex_unlock(&fx.lock);
	/* The RM sends "apps": null when nothing matches. */
	if (json_array_size(list) == 0) {
		json_decref(list);
		return mer_http_res_json_new(res, 200,
					     json_pack("{s:n}", "apps"));
	}
	return mer_http_res_json_new(
	    res, 200, json_pack("{s:{s:o}}", "apps", "app", list));
}

static int h_state(struct mer_http_req *req, struct mer_http_res *res,
		   void *arg)
{
	const char *id = mer_http_req_param(req, "id");
	const char *want =
	    json_string_value(json_object_get(mer_http_req_json(req), "state"));
	json_t *a;

	(void)arg;
	record(req);
	pthread_mutex_lock(&fx.lock);
	a = json_object_get(fx.apps, id);
	if (a && want && !strcmp(want, "KILLED")) {
		json_object_set_new(a, "state", json_string("KILLED"));
		json_object_set_new(a, "final", json_string("KILLED"));
	}
	pthread_mutex_unlock(&fx.lock);
	if (!a)
		return rm_err(res, 404, "NotFoundException", "no such app");
	return mer_http_res_json_new(res, 202,
				     json_pack("{s:s}", "state", "KILLING"));
}

static const struct mer_http_route routes[] = {
    {"GET", "/ws/v1/cluster/info", h_fixed, &fx.info, 0},
    {"GET", "/ws/v1/cluster/metrics", h_fixed, &fx.metrics, 0},
    {"GET", "/ws/v1/cluster/nodes", h_fixed, &fx.nodes, 0},
    {"GET", "/ws/v1/cluster/scheduler", h_fixed, &fx.sched, 0},
    {"POST", "/ws/v1/cluster/apps/new-application", h_new_app, NULL,
     MER_HTTP_JSON_OPTIONAL},
    {"POST", "/ws/v1/cluster/apps", h_submit, NULL, MER_HTTP_JSON_BODY},
    {"GET", "/ws/v1/cluster/apps", h_apps, NULL, 0},
    {"GET", "/ws/v1/cluster/apps/{id}", h_app, NULL, 0},
    {"PUT", "/ws/v1/cluster/apps/{id}/state", h_state, NULL,
     MER_HTTP_JSON_BODY},
};

struct env {
	struct mer_http_server *srv;
	struct mer_agent_cfg cfg;
	char *dir;
};

static int env_up(struct env *e)
{
	struct mer_http_config hc = {.url = "http://127.0.0.1:0"};
	char cfg[2048], err[512];
	int rv;

	memset(e, 0, sizeof(*e));
	fx.info = load_fixture("info.json");
	fx.metrics = load_fixture("metrics.json");
	fx.nodes = load_fixture("nodes.json");
	fx.sched = load_fixture("scheduler.json");
	fx.apps = json_object();
	fx.received = json_array();
	if (!fx.info || !fx.metrics || !fx.nodes || !fx.sched)
		return MER_EIO;
	if ((rv = t_tmpdir("agent-yarn", &e->dir)) ||
	    (rv = mer_http_server_new(&hc, &e->srv, err, sizeof(err))) ||
	    (rv = mer_http_server_add_routes(
		 e->srv, routes, sizeof(routes) / sizeof(routes[0]))) ||
	    (rv = mer_http_server_start(e->srv)))
		return rv;
	snprintf(cfg, sizeof(cfg),
		 "{\"site\": {\"name\": \"yarn-a\", \"region\": \"eu-1\"},"
		 " \"scheduler\": {\"kind\": \"yarn\", \"url\": "
		 "\"http://127.0.0.1:%d\", \"user\": \"meridian\","
		 " \"queue\": \"train\"},"
		 " \"share\": {\"pools\": [\"train\", \"serve\"]},"
		 " \"prices\": {\"gpu_hour\": {\"a100\": 2.0}},"
		 " \"agent\": {\"state_file\": \"%s/state\"}}",
		 mer_http_server_port(e->srv), e->dir);
	rv = mer_agent_cfg_load_string("yarn.json", cfg, &e->cfg, err,
				       sizeof(err));
	if (rv)
		fprintf(stderr, "%s\n", err);
	return rv;
}

static void env_down(struct env *e)
{
	mer_http_server_free(e->srv);
	mer_agent_cfg_free(&e->cfg);
	t_rmtree(e->dir);
	free(e->dir);
	json_decref(fx.info);
	json_decref(fx.metrics);
	json_decref(fx.nodes);
	json_decref(fx.sched);
	json_decref(fx.apps);
	json_decref(fx.received);
}

static json_t *received(const char *method, const char *path)
{
	json_t *r, *found = NULL;
	size_t i;

	pthread_mutex_lock(&fx.lock);
	json_array_foreach(fx.received, i, r)
	{
		if (!strcmp(json_string_value(json_object_get(r, "method")),
			    method) &&
		    !strcmp(json_string_value(json_object_get(r, "path")),
			    path))
			found = r;
	}
	if (found)
		json_incref(found);
	pthread_mutex_unlock(&fx.lock);
	return found;
}

static int near(double a, double b)
{
	return fabs(a - b) < 1e-6;
}

static void test_capacity(void)
{
	struct env e;
	void *inst = NULL;
	struct mer_agent_capacity *cap = calloc(1, sizeof(*cap));
	const struct mer_agent_res *r;
	const struct mer_agent_pool *train = NULL;
	char err[512] = "";

	T_ASSERT(cap);
	if (env_up(&e)) {
		t_fail(__FILE__, __LINE__, "fixture RM did not start");
		goto out;
	}
	T_OK(mer_agent_yarn_ops.open(&e.cfg, &inst, err, sizeof(err)));
	T_OK(mer_agent_yarn_ops.probe(inst, cap, err, sizeof(err)));
	T_EQ_STR(cap->version, "3.3.6");
	/* leaf queues: default, train, serve (ml is a parent) */
	T_EQ_INT(cap->npools, 3);
	for (size_t i = 0; i < cap->npools; i++)
		if (!strcmp(cap->pools[i].name, "train"))
			train = &cap->pools[i];
	T_ASSERT(train != NULL);
	T_EQ_INT(train->pending_jobs, 2);
	/* 60% of 3 nodes (yn3 UNHEALTHY: not allocatable) */
	T_ASSERT((r = mer_agent_pool_find(train, "cpu")) != NULL);
	T_EXPECT(near(r->total, 57.6));
	T_EXPECT(near(r->allocatable, 38.4));
	T_EXPECT(near(r->free, 22.4));
	T_EXPECT(near(r->pending, 8));
	T_ASSERT((r = mer_agent_pool_find(train, "memory_mb")) != NULL);
	T_EXPECT(near(r->allocatable, 157286.4));
	T_EXPECT(near(r->free, 157286.4 - 65536));
	T_EXPECT(near(r->pending, 32768));
	/* GPUs: yarn.io/gpu, model from the nodes' "a100" label */
	T_ASSERT((r = mer_agent_pool_find(train, "gpu:a100")) != NULL);
	T_EXPECT(near(r->total, 7.2));
	T_EXPECT(near(r->allocatable, 4.8));
	T_EXPECT(near(r->free, 1.8));
	T_EXPECT(near(r->pending, 2));
	/* simple auth: user.name on every call */
	json_t *rec = received("GET", "/ws/v1/cluster/scheduler");
	T_ASSERT(rec != NULL);
	T_EQ_STR(json_string_value(json_object_get(
		     json_object_get(rec, "query"), "user.name")),
		 "meridian");
	json_decref(rec);
	mer_agent_yarn_ops.close(inst);
out:
	free(cap);
	env_down(&e);
}

static void test_summary_valid_for_fed(void)
{
	struct env e;
	struct mer_agent *a = NULL;
	json_t *s = NULL;
	char err[512] = "";

	if (env_up(&e)) {
		t_fail(__FILE__, __LINE__, "fixture RM did not start");
		env_down(&e);
		return;
	}
	T_OK(mer_agent_open(&e.cfg, &a, err, sizeof(err)));
	T_OK(mer_agent_probe(a));
	T_OK(mer_agent_summary(a, &s));
	json_t *site = json_object_get(s, "site");
	T_EQ_STR(json_string_value(json_object_get(site, "scheduler")), "yarn");
	/* only the shared queues */
	T_EQ_INT(json_array_size(json_object_get(site, "pools")), 2);
	if (mer_site_validate(site, NULL, err, sizeof(err)))
		t_fail(__FILE__, __LINE__, "fed.c refused: %s", err);
	json_decref(s);
	mer_agent_close(a);
	env_down(&e);
}

static void test_app_lifecycle(void)
{
	struct env e;
	void *inst = NULL;
	struct mer_agent_stage st = {0};
	struct mer_agent_stage_status ss;
	char err[512] = "", id[128], id2[128];

	if (env_up(&e)) {
		t_fail(__FILE__, __LINE__, "fixture RM did not start");
		env_down(&e);
		return;
	}
	T_OK(mer_agent_yarn_ops.open(&e.cfg, &inst, err, sizeof(err)));
	snprintf(st.id, sizeof(st.id), "job-9/prep");
	st.command = strdup("spark-submit prep.py");
	st.cpus = 4;
	st.memory_mb = 8192;
	st.gpus = 1;
	st.time_limit_s = 600;
	T_OK(mer_agent_yarn_ops.submit(inst, &st, id, sizeof(id), err,
				       sizeof(err)));
	T_EQ_STR(id, "application_1700000000000_0001");
	json_t *rec = received("POST", "/ws/v1/cluster/apps/new-application");
	T_ASSERT(rec != NULL);
	json_decref(rec);
	rec = received("POST", "/ws/v1/cluster/apps");
	T_ASSERT(rec != NULL);
	json_t *b = json_loads(json_string_value(json_object_get(rec, "body")),
			       0, NULL);
	json_decref(rec);
	T_ASSERT(b != NULL);
	T_EQ_STR(json_string_value(json_object_get(b, "application-id")), id);
	T_EQ_STR(json_string_value(json_object_get(b, "application-name")),
		 "meridian:job-9/prep");
	T_EQ_STR(json_string_value(json_object_get(b, "queue")), "train");
	T_EQ_STR(json_string_value(json_object_get(b, "application-type")),
		 "MERIDIAN");
	T_EQ_INT(json_integer_value(json_object_get(b, "max-app-attempts")), 1);
	T_EQ_STR(json_string_value(json_object_get(
		     json_object_get(json_object_get(b, "am-container-spec"),
				     "commands"),
		     "command")),
		 "spark-submit prep.py");
	json_t *res = json_object_get(b, "resource");
	T_EQ_INT(json_integer_value(json_object_get(res, "memory")), 8192);
	T_EQ_INT(json_integer_value(json_object_get(res, "vCores")), 4);
	json_t *ri = json_array_get(
	    json_object_get(json_object_get(res, "resourceInformations"),
			    "resourceInformation"),
	    0);
	T_EQ_STR(json_string_value(json_object_get(ri, "name")), "yarn.io/gpu");
	T_EQ_INT(json_integer_value(json_object_get(ri, "value")), 1);
	T_EQ_INT(
	    json_integer_value(json_object_get(
		json_array_get(
		    json_object_get(json_object_get(b, "application-timeouts"),
				    "timeout"),
		    0),
		"remainingTimeInSeconds")),
	    600);
	json_decref(b);

	/* state from the app */
	T_OK(mer_agent_yarn_ops.status(inst, id, &ss, err, sizeof(err)));
	T_EQ_INT(ss.state, MER_AGENT_STAGE_PENDING);
	pthread_mutex_lock(&fx.lock);
	json_object_set_new(json_object_get(fx.apps, id), "state",
			    json_string("RUNNING"));
	pthread_mutex_unlock(&fx.lock);
	T_OK(mer_agent_yarn_ops.status(inst, id, &ss, err, sizeof(err)));
	T_EQ_INT(ss.state, MER_AGENT_STAGE_RUNNING);
	pthread_mutex_lock(&fx.lock);
	json_object_set_new(json_object_get(fx.apps, id), "state",
			    json_string("FAILED"));
	json_object_set_new(json_object_get(fx.apps, id), "final",
			    json_string("FAILED"));
	json_object_set_new(
	    json_object_get(fx.apps, id), "diag",
	    json_string("Application application_1700000000000_0001 "
			"failed 1 times due to AM Container exited with  "
			"exitCode: 3\nFailing this attempt.Diagnostics: "
			"Exception from container-launch.\nExit code: 3"));
	pthread_mutex_unlock(&fx.lock);
	T_OK(mer_agent_yarn_ops.status(inst, id, &ss, err, sizeof(err)));
	T_EQ_INT(ss.state, MER_AGENT_STAGE_FAILED);
	T_EQ_INT(ss.exit_code, 3);

	/* found again by stage (tag + name) */
	T_OK(mer_agent_yarn_ops.find(inst, "job-9/prep", id2, sizeof(id2), err,
				     sizeof(err)));
	T_EQ_STR(id2, id);
	T_EQ_INT(mer_agent_yarn_ops.find(inst, "job-9/other", id2, sizeof(id2),
					 err, sizeof(err)),
		 MER_ENOTFOUND);

	/* kill by setting the state */
	snprintf(st.id, sizeof(st.id), "job-9/train");
	T_OK(mer_agent_yarn_ops.submit(inst, &st, id, sizeof(id), err,
				       sizeof(err)));
	T_OK(mer_agent_yarn_ops.cancel(inst, id, err, sizeof(err)));
	char path[256];
	snprintf(path, sizeof(path), "/ws/v1/cluster/apps/%s/state", id);
	rec = received("PUT", path);
	T_ASSERT(rec != NULL);
	T_EQ_STR(json_string_value(json_object_get(rec, "body")),
		 "{\"state\":\"KILLED\"}");
	json_decref(rec);
	T_OK(mer_agent_yarn_ops.status(inst, id, &ss, err, sizeof(err)));
	T_EQ_INT(ss.state, MER_AGENT_STAGE_CANCELLED);
	T_EQ_INT(mer_agent_yarn_ops.status(inst, "application_1_9999", &ss, err,
					   sizeof(err)),
		 MER_ENOTFOUND);
	mer_agent_yarn_ops.close(inst);
	mer_agent_stage_clear(&st);
	env_down(&e);
}

static void test_runner_over_yarn(void)
{
	struct env e;
	struct mer_agent *a = NULL;
	struct mer_agent_stage st = {0};
	char err[512] = "", id[128];
	int already = 0;
	enum mer_agent_stage_state state;
	int code;

	if (env_up(&e)) {
		t_fail(__FILE__, __LINE__, "fixture RM did not start");
		env_down(&e);
		return;
	}
	T_OK(mer_agent_open(&e.cfg, &a, err, sizeof(err)));
	snprintf(st.id, sizeof(st.id), "j/s");
	st.command = strdup("true");
	T_OK(mer_agent_launch(a, &st, &already, err, sizeof(err)));
	T_EQ_INT(already, 0);
	T_OK(mer_agent_launch(a, &st, &already, err, sizeof(err)));
	T_EQ_INT(already, 1);
	T_OK(mer_agent_stage_get(a, "j/s", &state, NULL, id, sizeof(id)));
	pthread_mutex_lock(&fx.lock);
	T_EQ_INT(json_object_size(fx.apps), 1);
	json_object_set_new(json_object_get(fx.apps, id), "state",
			    json_string("FINISHED"));
	json_object_set_new(json_object_get(fx.apps, id), "final",
			    json_string("SUCCEEDED"));
	pthread_mutex_unlock(&fx.lock);
	T_EXPECT(mer_agent_tick(a) >= 1);
	T_OK(mer_agent_stage_get(a, "j/s", &state, &code, NULL, 0));
	T_EQ_INT(state, MER_AGENT_STAGE_SUCCEEDED);
	T_EQ_INT(code, 0);
	mer_agent_close(a);
	mer_agent_stage_clear(&st);
	env_down(&e);
}

static const struct t_case cases[] = {
    {"capacity", test_capacity},
    {"summary_valid_for_fed", test_summary_valid_for_fed},
    {"app_lifecycle", test_app_lifecycle},
    {"runner_over_yarn", test_runner_over_yarn},
};

T_MAIN("agent_yarn", cases)
