/*
 * The YARN adapter against a fixture ResourceManager (common/http.h) that
 * answers /ws/v1/cluster/{info,metrics,nodes,scheduler} with bodies shaped
 * like the RM REST API (tests/fixtures/yarn/, Capacity Scheduler with
 * nested queues, yarn.io/gpu resource information), implements the
 * Services API (/app/v1/services) with the real service states and the RM
 * app behind each service, and records what it receives.
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

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static struct {
	pthread_mutex_t lock;
	json_t *info, *metrics, *nodes, *sched;
	json_t *svcs; /* name -> {"spec", "id", "state", "containers"} */
	json_t *apps; /* RM app id -> {"name", "state", "final", "diag"} */
	struct t_reqlog log; /* every request, in order */
	int next;
} fx = {.lock = PTHREAD_MUTEX_INITIALIZER, .log = T_REQLOG_INITIALIZER};

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
	t_reqlog_add(&fx.log, req, NULL);
	return mer_http_res_json(res, 200, *(json_t **)arg);
}

/*
 * The Services API (/app/v1/services) as the RM's ApiServer answers it: a
 * POST makes an RM app (ACCEPTED) and answers 202 with the app id in the
 * diagnostics; GET shows the service with "id" (the app), "state" and the
 * components' containers; once the app has ended the ApiServer reports
 * STOPPED for a success and for a stop alike (FAILED for a failure) and the
 * outcome is in the RM app's finalStatus. PUT {"state": "STOPPED"} stops it.
 * fx_am() plays the service's AM.
 */
static int h_svc_create(struct mer_http_req *req, struct mer_http_res *res,
			void *arg)
{
	json_t *b = mer_http_req_json(req);
	const char *name = json_string_value(json_object_get(b, "name"));
	char id[64], msg[128];

	(void)arg;
	t_reqlog_add(&fx.log, req, NULL);
	if (!name || !json_is_array(json_object_get(b, "components")))
		return mer_http_res_json_new(
		    res, 400,
		    json_pack("{s:s}", "diagnostics", "Invalid service spec"));
	pthread_mutex_lock(&fx.lock);
	if (json_object_get(fx.svcs, name)) {
		pthread_mutex_unlock(&fx.lock);
		snprintf(msg, sizeof(msg),
			 "Failed to create service %s, because it already "
			 "exists.",
			 name);
		return mer_http_res_json_new(
		    res, 400, json_pack("{s:s}", "diagnostics", msg));
	}
	snprintf(id, sizeof(id), "application_1700000000000_%04d", ++fx.next);
	json_object_set_new(fx.svcs, name,
			    json_pack("{s:O, s:s, s:s, s:[]}", "spec", b, "id",
				      id, "state", "ACCEPTED", "containers"));
	json_object_set_new(fx.apps, id,
			    json_pack("{s:s, s:s, s:s, s:s}", "name", name,
				      "state", "ACCEPTED", "final", "UNDEFINED",
				      "diag", ""));
	pthread_mutex_unlock(&fx.lock);
	snprintf(msg, sizeof(msg), "Application ID: %s", id);
	return mer_http_res_json_new(
	    res, 202,
	    json_pack("{s:s, s:s, s:s}", "uri", "/app/v1/services/x",
		      "diagnostics", msg, "state", "ACCEPTED"));
}

/* The AM's doings: "start" (containers READY), "succeed", "fail" (exit
 * code 3). Called by tests. */
static void fx_am(const char *name, const char *what)
{
	json_t *sv, *app, *c;
	size_t i, n;

	pthread_mutex_lock(&fx.lock);
	sv = json_object_get(fx.svcs, name);
	app = sv ? json_object_get(fx.apps,
				   json_string_value(json_object_get(sv, "id")))
		 : NULL;
	if (!sv || !app)
		goto out;
	c = json_array_get(
	    json_object_get(json_object_get(sv, "spec"), "components"), 0);
	n = (size_t)json_integer_value(
	    json_object_get(c, "number_of_containers"));
	if (!strcmp(what, "start")) {
		json_object_set_new(sv, "state", json_string("STABLE"));
		json_object_set_new(app, "state", json_string("RUNNING"));
		json_array_clear(json_object_get(sv, "containers"));
		for (i = 0; i < n; i++)
			json_array_append_new(
			    json_object_get(sv, "containers"),
			    json_pack("{s:s, s:s}", "id",
				      "container_e01_1700000000000_0001_01",
				      "state", "READY"));
	} else {
		int ok = !strcmp(what, "succeed");
		json_object_set_new(sv, "state",
				    json_string(ok ? "STOPPED" : "FAILED"));
		json_array_clear(json_object_get(sv, "containers"));
		json_object_set_new(app, "state", json_string("FINISHED"));
		json_object_set_new(app, "final",
				    json_string(ok ? "SUCCEEDED" : "FAILED"));
		if (!ok)
			json_object_set_new(
			    app, "diag",
			    json_string("Component stage failed: container "
					"exited.\nExit code: 3"));
	}
out:
	pthread_mutex_unlock(&fx.lock);
}

static json_t *svc_json(const char *name, json_t *sv)
{
	json_t *spec = json_deep_copy(json_object_get(sv, "spec"));
	json_t *c = json_array_get(json_object_get(spec, "components"), 0);

	json_object_set_new(
	    spec, "id",
	    json_string(json_string_value(json_object_get(sv, "id"))));
	json_object_set_new(
	    spec, "state",
	    json_string(json_string_value(json_object_get(sv, "state"))));
	json_object_set(c, "containers", json_object_get(sv, "containers"));
	(void)name;
	return spec;
}

static int h_svc_get(struct mer_http_req *req, struct mer_http_res *res,
		     void *arg)
{
	const char *name = mer_http_req_param(req, "name");
	json_t *sv, *out = NULL;

	(void)arg;
	t_reqlog_add(&fx.log, req, NULL);
	pthread_mutex_lock(&fx.lock);
	if ((sv = json_object_get(fx.svcs, name)))
		out = svc_json(name, sv);
	pthread_mutex_unlock(&fx.lock);
	if (!out)
		return mer_http_res_json_new(
		    res, 404,
		    json_pack("{s:s}", "diagnostics", "Service not found"));
	return mer_http_res_json_new(res, 200, out);
}

static int h_svc_put(struct mer_http_req *req, struct mer_http_res *res,
		     void *arg)
{
	const char *name = mer_http_req_param(req, "name");
	const char *want =
	    json_string_value(json_object_get(mer_http_req_json(req), "state"));
	json_t *sv, *app = NULL;

	(void)arg;
	t_reqlog_add(&fx.log, req, NULL);
	pthread_mutex_lock(&fx.lock);
	sv = json_object_get(fx.svcs, name);
	if (sv)
		app = json_object_get(
		    fx.apps, json_string_value(json_object_get(sv, "id")));
	if (sv && app && want && !strcmp(want, "STOPPED") &&
	    strcmp(json_string_value(json_object_get(app, "state")),
		   "FINISHED") != 0) {
		/* AM up: it unregisters with ENDED; else the RM kills. */
		int up =
		    !strcmp(json_string_value(json_object_get(app, "state")),
			    "RUNNING");
		json_object_set_new(sv, "state", json_string("STOPPED"));
		json_array_clear(json_object_get(sv, "containers"));
		json_object_set_new(app, "state",
				    json_string(up ? "FINISHED" : "KILLED"));
		json_object_set_new(app, "final",
				    json_string(up ? "ENDED" : "KILLED"));
	}
	pthread_mutex_unlock(&fx.lock);
	if (!sv)
		return mer_http_res_json_new(
		    res, 404,
		    json_pack("{s:s}", "diagnostics", "Service not found"));
	return mer_http_res_json_new(
	    res, 200, json_pack("{s:s}", "diagnostics", "Service stopped"));
}

static json_t *app_json(const char *id, json_t *a)
{
	return json_pack(
	    "{s:s, s:s, s:s, s:s, s:s, s:s, s:f, s:s, s:s, s:s, s:I, s:s}",
	    "id", id, "user", "meridian", "name",
	    json_string_value(json_object_get(a, "name")), "queue", "train",
	    "state", json_string_value(json_object_get(a, "state")),
	    "finalStatus", json_string_value(json_object_get(a, "final")),
	    "progress", 0.0, "trackingUI", "UNASSIGNED", "diagnostics",
	    json_string_value(json_object_get(a, "diag")), "applicationType",
	    "yarn-service", "startedTime", (json_int_t)1701338400000,
	    "applicationTags", "name: " /* a comma-separated string */);
}

static int h_app(struct mer_http_req *req, struct mer_http_res *res, void *arg)
{
	const char *id = mer_http_req_param(req, "id");
	json_t *a, *out = NULL;

	(void)arg;
	t_reqlog_add(&fx.log, req, NULL);
	pthread_mutex_lock(&fx.lock);
	if ((a = json_object_get(fx.apps, id)))
		out = json_pack("{s:o}", "app", app_json(id, a));
	pthread_mutex_unlock(&fx.lock);
	if (!out)
		return rm_err(res, 404, "NotFoundException",
			      "java.lang.Exception: app with id not found");
	return mer_http_res_json_new(res, 200, out);
}

static const struct mer_http_route routes[] = {
    {"GET", "/ws/v1/cluster/info", h_fixed, &fx.info, 0},
    {"GET", "/ws/v1/cluster/metrics", h_fixed, &fx.metrics, 0},
    {"GET", "/ws/v1/cluster/nodes", h_fixed, &fx.nodes, 0},
    {"GET", "/ws/v1/cluster/scheduler", h_fixed, &fx.sched, 0},
    {"GET", "/ws/v1/cluster/apps/{id}", h_app, NULL, 0},
    {"POST", "/app/v1/services", h_svc_create, NULL, MER_HTTP_JSON_BODY},
    {"GET", "/app/v1/services/{name}", h_svc_get, NULL, 0},
    {"PUT", "/app/v1/services/{name}", h_svc_put, NULL, MER_HTTP_JSON_BODY},
};

static void env_down(struct t_fxsite *e)
{
	t_fxsite_stop(e);
	json_decref(fx.info);
	json_decref(fx.metrics);
	json_decref(fx.nodes);
	json_decref(fx.sched);
	json_decref(fx.apps);
	json_decref(fx.svcs);
	t_reqlog_free(&fx.log);
	fx.info = fx.metrics = fx.nodes = fx.sched = fx.apps = fx.svcs = NULL;
}

/* Starts the fixture RM and loads the agent's config; on failure the case
 * has failed and nothing is left to stop. */
static int env_up(struct t_fxsite *e)
{
	int rv;

	memset(e, 0, sizeof(*e));
	fx.info = t_fixture_json("yarn/info.json");
	fx.metrics = t_fixture_json("yarn/metrics.json");
	fx.nodes = t_fixture_json("yarn/nodes.json");
	fx.sched = t_fixture_json("yarn/scheduler.json");
	fx.apps = json_object();
	fx.svcs = json_object();
	t_reqlog_reset(&fx.log);
	rv = !fx.info || !fx.metrics || !fx.nodes || !fx.sched ? MER_EIO : 0;
	if (!rv)
		rv = t_fxsite_start(e, "agent-yarn", routes,
				    sizeof(routes) / sizeof(routes[0]));
	if (!rv)
		rv = t_fxsite_cfg(
		    e, "yarn.json",
		    "{\"site\": {\"name\": \"yarn-a\", \"region\": \"eu-1\"},"
		    " \"scheduler\": {\"kind\": \"yarn\", \"url\": "
		    "\"http://127.0.0.1:%d\", \"user\": \"meridian\","
		    " \"queue\": \"train\"},"
		    " \"share\": {\"pools\": [\"train\", \"serve\"]},"
		    " \"prices\": {\"gpu_hour\": {\"a100\": 2.0}},"
		    " \"agent\": {\"state_file\": \"%s/state\"}}",
		    t_fxsite_port(e), e->dir);
	if (rv) {
		t_fail(__FILE__, __LINE__, "fixture RM did not start: %s",
		       t_strerror(rv));
		env_down(e);
	}
	return rv;
}

static json_t *received(const char *method, const char *path)
{
	return t_reqlog_last(&fx.log, method, path, T_PATH_IS);
}

static json_t *received_body(const char *method, const char *path)
{
	return t_reqlog_last_body(&fx.log, method, path, T_PATH_IS);
}

static int near(double a, double b)
{
	return fabs(a - b) < 1e-6;
}

static void test_capacity(void)
{
	struct t_fxsite e;
	void *inst = NULL;
	struct mer_agent_capacity *cap = calloc(1, sizeof(*cap));
	const struct mer_agent_res *r;
	const struct mer_agent_pool *train = NULL;
	char err[512] = "";

	T_ASSERT(cap);
	if (env_up(&e))
		goto out_free;
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

	if (env_up(&e))
		return;
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

static void test_service_lifecycle(void)
{
	struct t_fxsite e;
	void *inst = NULL;
	struct mer_agent_stage st = {0};
	struct mer_agent_stage_status ss;
	char err[512] = "", id[128], id2[128], path[256];

	if (env_up(&e))
		return;
	T_OK(mer_agent_yarn_ops.open(&e.cfg, &inst, err, sizeof(err)));
	snprintf(st.id, sizeof(st.id), "job-9/prep#1");
	st.command = strdup("python prep.py");
	st.cpus = 4;
	st.memory_mb = 8192;
	st.gpus = 2;
	st.replicas = 3;
	st.time_limit_s = 600;
	T_OK(mer_agent_yarn_ops.submit(inst, &st, id, sizeof(id), err,
				       sizeof(err)));
	T_ASSERT(strncmp(id, "mer-job-9-prep-1-", 17) == 0);
	json_t *b = received_body("POST", "/app/v1/services");
	T_ASSERT(b != NULL);
	T_EQ_STR(json_string_value(json_object_get(b, "name")), id);
	T_EQ_STR(json_string_value(json_object_get(b, "queue")), "train");
	T_EQ_INT(json_integer_value(json_object_get(b, "lifetime")), 600);
	json_t *c = json_array_get(json_object_get(b, "components"), 0);
	T_EQ_INT(json_array_size(json_object_get(b, "components")), 1);
	T_EQ_STR(json_string_value(json_object_get(c, "launch_command")),
		 "python prep.py");
	T_EQ_STR(json_string_value(json_object_get(c, "restart_policy")),
		 "NEVER");
	/* replicas are containers, each with the per-replica resources */
	T_EQ_INT(json_integer_value(json_object_get(c, "number_of_containers")),
		 3);
	json_t *res = json_object_get(c, "resource");
	T_EQ_INT(json_integer_value(json_object_get(res, "cpus")), 4);
	T_EQ_STR(json_string_value(json_object_get(res, "memory")), "8192");
	T_EQ_INT(json_integer_value(json_object_get(
		     json_object_get(json_object_get(res, "additional"),
				     "yarn.io/gpu"),
		     "value")),
		 2);
	T_EQ_STR(mer_agent_jstr(c, "configuration", "env", "MERIDIAN_STAGE_ID",
				NULL),
		 "job-9/prep#1");
	json_decref(b);
	/* no bare RM app whose AM would never register */
	json_t *bare = received("POST", "/ws/v1/cluster/apps");
	T_EXPECT(bare == NULL);
	json_decref(bare);

	/* ACCEPTED -> pending; AM up with READY containers -> running */
	T_OK(mer_agent_yarn_ops.status(inst, id, &ss, err, sizeof(err)));
	T_EQ_INT(ss.state, MER_AGENT_STAGE_PENDING);
	fx_am(id, "start");
	T_OK(mer_agent_yarn_ops.status(inst, id, &ss, err, sizeof(err)));
	T_EQ_INT(ss.state, MER_AGENT_STAGE_RUNNING);
	/* a failure: the exit code from the RM app's diagnostics */
	fx_am(id, "fail");
	T_OK(mer_agent_yarn_ops.status(inst, id, &ss, err, sizeof(err)));
	T_EQ_INT(ss.state, MER_AGENT_STAGE_FAILED);
	T_EQ_INT(ss.exit_code, 3);

	/* found again by stage id (name + env) */
	T_OK(mer_agent_yarn_ops.find(inst, "job-9/prep#1", id2, sizeof(id2),
				     err, sizeof(err)));
	T_EQ_STR(id2, id);
	T_EQ_INT(mer_agent_yarn_ops.find(inst, "job-9/other", id2, sizeof(id2),
					 err, sizeof(err)),
		 MER_ENOTFOUND);
	/* the same name twice: EEXIST, so the runner adopts */
	T_EQ_INT(mer_agent_yarn_ops.submit(inst, &st, id2, sizeof(id2), err,
					   sizeof(err)),
		 MER_EEXIST);

	/* success: the Services API says STOPPED, the RM app SUCCEEDED */
	snprintf(st.id, sizeof(st.id), "job-9/ok");
	st.gpus = 0;
	st.replicas = 0;
	T_OK(mer_agent_yarn_ops.submit(inst, &st, id, sizeof(id), err,
				       sizeof(err)));
	fx_am(id, "start");
	fx_am(id, "succeed");
	T_OK(mer_agent_yarn_ops.status(inst, id, &ss, err, sizeof(err)));
	T_EQ_INT(ss.state, MER_AGENT_STAGE_SUCCEEDED);
	T_EQ_INT(ss.exit_code, 0);

	/* stop: PUT state STOPPED; the app ends ENDED -> cancelled */
	snprintf(st.id, sizeof(st.id), "job-9/train");
	T_OK(mer_agent_yarn_ops.submit(inst, &st, id, sizeof(id), err,
				       sizeof(err)));
	fx_am(id, "start");
	T_OK(mer_agent_yarn_ops.cancel(inst, id, err, sizeof(err)));
	snprintf(path, sizeof(path), "/app/v1/services/%s", id);
	b = received_body("PUT", path);
	T_ASSERT(b != NULL);
	T_EQ_STR(json_string_value(json_object_get(b, "state")), "STOPPED");
	json_decref(b);
	T_OK(mer_agent_yarn_ops.status(inst, id, &ss, err, sizeof(err)));
	T_EQ_INT(ss.state, MER_AGENT_STAGE_CANCELLED);
	T_EQ_INT(mer_agent_yarn_ops.status(inst, "mer-nothing-00000000", &ss,
					   err, sizeof(err)),
		 MER_ENOTFOUND);
	/* a job id that is not a service name is refused, not sent */
	T_EQ_INT(mer_agent_yarn_ops.status(inst, "../x", &ss, err, sizeof(err)),
		 MER_EINVAL);

	/* gang with replicas: YARN cannot promise all-or-nothing */
	snprintf(st.id, sizeof(st.id), "job-9/gang");
	st.replicas = 2;
	st.gang = 1;
	T_EQ_INT(mer_agent_yarn_ops.submit(inst, &st, id, sizeof(id), err,
					   sizeof(err)),
		 MER_EUNSUPPORTED);
	mer_agent_yarn_ops.close(inst);
	mer_agent_stage_clear(&st);
	env_down(&e);
}

static void test_runner_over_yarn(void)
{
	struct t_fxsite e;
	struct mer_agent *a = NULL;
	struct mer_agent_stage st = {0};
	char err[512] = "", id[128];
	int already = 0;
	enum mer_agent_stage_state state;
	int code;

	if (env_up(&e))
		return;
	T_OK(mer_agent_open(&e.cfg, &a, err, sizeof(err)));
	snprintf(st.id, sizeof(st.id), "j/s");
	st.command = strdup("true");
	T_OK(mer_agent_launch(a, &st, &already, err, sizeof(err)));
	T_EQ_INT(already, 0);
	T_OK(mer_agent_launch(a, &st, &already, err, sizeof(err)));
	T_EQ_INT(already, 1);
	T_OK(mer_agent_stage_get(a, "j/s", &state, NULL, id, sizeof(id)));
	pthread_mutex_lock(&fx.lock);
	T_EQ_INT(json_object_size(fx.svcs), 1);
	pthread_mutex_unlock(&fx.lock);
	fx_am(id, "start");
	fx_am(id, "succeed");
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
    {"service_lifecycle", test_service_lifecycle},
    {"runner_over_yarn", test_runner_over_yarn},
};

T_MAIN("agent_yarn", cases)
