/*
 * The YARN adapter, through the ResourceManager REST API: capacity from
 * /ws/v1/cluster/metrics, /nodes and /scheduler (leaf queues of the
 * Capacity Scheduler are the pools; GPUs are the yarn.io/gpu resource),
 * stages as YARN services (/app/v1/services: one component of `replicas`
 * containers, restart policy NEVER), stopped with state STOPPED. Simple
 * auth only (user.name); Kerberos/SPNEGO is not supported.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/log.h"
#include "site-agent/adapter.h"
#include "site-agent/config.h"
#include "site-agent/httpc.h"
#include "site-agent/kutil.h"

#define GPU_RES "yarn.io/gpu"

struct yarn {
	const struct mer_agent_cfg *cfg;
	struct mer_agent_http http;
	char user_q[128]; /* "user.name=<user>" or "" */
};

static int yarn_open(const struct mer_agent_cfg *cfg, void **inst, char *err,
		     size_t errlen)
{
	struct yarn *y = calloc(1, sizeof(*y));
	int rv;

	if (!y)
		return MER_ENOMEM;
	y->cfg = cfg;
	if ((rv = mer_agent_http_init(&y->http, cfg->url, NULL, cfg->ca_file,
				      cfg->insecure, (long)cfg->timeout_ms))) {
		snprintf(err, errlen, "yarn: bad scheduler.url");
		free(y);
		return rv;
	}
	if (cfg->user && *cfg->user) {
		for (const char *p = cfg->user; *p; p++) {
			if (!isalnum((unsigned char)*p) && *p != '_' &&
			    *p != '-' && *p != '.') {
				snprintf(err, errlen,
					 "yarn: scheduler.user has characters "
					 "other than A-Z a-z 0-9 _ - .");
				mer_agent_http_clear(&y->http);
				free(y);
				return MER_EINVAL;
			}
		}
		snprintf(y->user_q, sizeof(y->user_q), "user.name=%s",
			 cfg->user);
	}
	*inst = y;
	return 0;
}

static int get(struct yarn *y, const char *path, const char *query,
	       json_t **out, long *st, char *err, size_t errlen)
{
	char p[1024];
	const char *sep = query && *query ? "?" : "";

	snprintf(p, sizeof(p), "%s%s%s%s%s", path, sep, query ? query : "",
		 y->user_q[0] ? (*sep ? "&" : "?") : "", y->user_q);
	return mer_agent_http_do(&y->http, "GET", p, NULL, NULL, st, out, err,
				 errlen);
}

/* The GPU count in a ResourceInfo ({"resourceInformations":
 * {"resourceInformation": [{"name": "yarn.io/gpu", "value": 4}]}}). */
static double res_gpus(const json_t *ri)
{
	size_t i;
	json_t *e;

	json_array_foreach (mer_agent_jget(ri, "resourceInformations",
					   "resourceInformation", NULL),
			    i, e) {
		const char *n = mer_agent_jstr(e, "name", NULL);
		if (n && strcmp(n, GPU_RES) == 0)
			return json_number_value(json_object_get(e, "value"));
	}
	return 0;
}

/* YARN does not know GPU models: take one from a node label naming a known
 * model, else the only model the site prices, else "unknown". */
static void gpu_kind(struct yarn *y, const json_t *nodes, char *out, size_t n)
{
	size_t i, j;
	json_t *nd, *l;
	char model[64];

	json_array_foreach (nodes, i, nd) {
		json_array_foreach (json_object_get(nd, "nodeLabels"), j, l) {
			const char *s = json_string_value(l);
			if (!s)
				continue;
			mer_agent_gpu_model(s, model, sizeof(model));
			if (json_object_get(y->cfg->gpu_hour, model)) {
				snprintf(out, n, "gpu:%s", model);
				return;
			}
		}
	}
	if (json_object_size(y->cfg->gpu_hour) == 1) {
		const char *key;
		json_t *v;
		json_object_foreach (y->cfg->gpu_hour, key, v) {
			snprintf(out, n, "gpu:%s", key);
			return;
		}
	}
	snprintf(out, n, "gpu:unknown");
}

struct totals {
	double cpu, mem, gpu;	 /* all nodes */
	double acpu, amem, agpu; /* RUNNING nodes */
};

/* Walks the Capacity Scheduler's queue tree; leaves become pools. */
static int add_queues(const json_t *q, const struct totals *t,
		      const char *gkind, struct mer_agent_capacity *cap,
		      int depth)
{
	size_t i;
	json_t *e;
	const json_t *kids = mer_agent_jget(q, "queues", "queue", NULL);

	if (depth > 32)
		return MER_ETOOBIG;
	if (json_array_size(kids) > 0) {
		json_array_foreach (kids, i, e) {
			int rv = add_queues(e, t, gkind, cap, depth + 1);
			if (rv)
				return rv;
		}
		return 0;
	}
	const char *name = mer_agent_jstr(q, "queueName", NULL);
	double share =
	    json_number_value(json_object_get(q, "absoluteCapacity")) / 100.0;
	const json_t *used = json_object_get(q, "resourcesUsed");
	struct mer_agent_pool *p;
	struct mer_agent_res *r;
	double pend_cpu = 0, pend_mem = 0, pend_gpu = 0;

	if (!name || !(p = mer_agent_cap_pool(cap, name)))
		return 0;
	json_array_foreach (
	    mer_agent_jget(q, "resources", "resourceUsagesByPartition", NULL),
	    i, e) {
		const json_t *pd = json_object_get(e, "pending");
		pend_cpu += json_number_value(json_object_get(pd, "vCores"));
		pend_mem += json_number_value(json_object_get(pd, "memory"));
		pend_gpu += res_gpus(pd);
	}
	p->pending_jobs = (int)json_integer_value(
	    json_object_get(q, "numPendingApplications"));
	p->est_wait_s = p->pending_jobs * 60.0;
	struct {
		const char *kind;
		double tot, alloc, used, pend;
	} rows[] = {
	    {"cpu", t->cpu, t->acpu,
	     json_number_value(json_object_get(used, "vCores")), pend_cpu},
	    {"memory_mb", t->mem, t->amem,
	     json_number_value(json_object_get(used, "memory")), pend_mem},
	    {gkind, t->gpu, t->agpu, res_gpus(used), pend_gpu},
	};
	for (size_t k = 0; k < 3; k++) {
		if (k == 2 && t->gpu <= 0)
			continue;
		if (!(r = mer_agent_pool_res(p, rows[k].kind)))
			return MER_ETOOBIG;
		r->total = rows[k].tot * share;
		r->allocatable = rows[k].alloc * share;
		r->free = r->allocatable - rows[k].used;
		if (r->free < 0)
			r->free = 0;
		r->pending = rows[k].pend;
	}
	return 0;
}

static int yarn_probe(void *inst, struct mer_agent_capacity *cap, char *err,
		      size_t errlen)
{
	struct yarn *y = inst;
	json_t *info = NULL, *metrics = NULL, *nodes = NULL, *sched = NULL;
	const json_t *nl, *si, *qs;
	struct totals t = {0};
	char gkind[80];
	size_t i;
	json_t *nd;
	long st;
	int rv;

	memset(cap, 0, sizeof(*cap));
	if ((rv = get(y, "/ws/v1/cluster/info", NULL, &info, &st, err,
		      errlen)) ||
	    (rv = get(y, "/ws/v1/cluster/metrics", NULL, &metrics, &st, err,
		      errlen)) ||
	    (rv = get(y, "/ws/v1/cluster/nodes", NULL, &nodes, &st, err,
		      errlen)) ||
	    (rv = get(y, "/ws/v1/cluster/scheduler", NULL, &sched, &st, err,
		      errlen)))
		goto out_free_replies;
	rv = MER_EPARSE;
	snprintf(
	    cap->version, sizeof(cap->version), "%s",
	    mer_agent_jstr(info, "clusterInfo", "resourceManagerVersion", NULL)
		? mer_agent_jstr(info, "clusterInfo", "resourceManagerVersion",
				 NULL)
		: "");
	if (!json_is_object(json_object_get(metrics, "clusterMetrics"))) {
		snprintf(err, errlen, "yarn: metrics without clusterMetrics");
		goto out_free_replies;
	}
	/* "nodes": null when the cluster has none. */
	nl = mer_agent_jget(nodes, "nodes", "node", NULL);
	if (!json_is_object(json_object_get(nodes, "nodes")) &&
	    !json_is_null(json_object_get(nodes, "nodes"))) {
		snprintf(err, errlen, "yarn: nodes reply without nodes");
		goto out_free_replies;
	}
	gpu_kind(y, nl, gkind, sizeof(gkind));
	json_array_foreach (nl, i, nd) {
		const char *state = mer_agent_jstr(nd, "state", NULL);
		const json_t *tr = json_object_get(nd, "totalResource");
		double c, m, g;
		if (tr) {
			c = json_number_value(json_object_get(tr, "vCores"));
			m = json_number_value(json_object_get(tr, "memory"));
			g = res_gpus(tr);
		} else {
			c = json_number_value(
				json_object_get(nd, "usedVirtualCores")) +
			    json_number_value(
				json_object_get(nd, "availableVirtualCores"));
			m = json_number_value(
				json_object_get(nd, "usedMemoryMB")) +
			    json_number_value(
				json_object_get(nd, "availMemoryMB"));
			g = 0;
		}
		t.cpu += c;
		t.mem += m;
		t.gpu += g;
		if (state && strcmp(state, "RUNNING") == 0) {
			t.acpu += c;
			t.amem += m;
			t.agpu += g;
		}
	}
	si = mer_agent_jget(sched, "scheduler", "schedulerInfo", NULL);
	if (!json_is_object(si)) {
		snprintf(err, errlen,
			 "yarn: scheduler reply without "
			 "schedulerInfo");
		goto out_free_replies;
	}
	qs = mer_agent_jget(si, "queues", "queue", NULL);
	if (json_array_size(qs) > 0) {
		if ((rv = add_queues(si, &t, gkind, cap, 0))) {
			snprintf(err, errlen,
				 "yarn: queue tree too deep or "
				 "too wide");
			goto out_free_replies;
		}
	} else {
		/* Fair or FIFO scheduler: one pool for the cluster. */
		const json_t *cm = json_object_get(metrics, "clusterMetrics");
		struct mer_agent_pool *p = mer_agent_cap_pool(cap, "default");
		struct mer_agent_res *r;
		if (p && (r = mer_agent_pool_res(p, "cpu"))) {
			r->total = t.cpu;
			r->allocatable = t.acpu;
			r->free = json_number_value(
			    json_object_get(cm, "availableVirtualCores"));
		}
		if (p && (r = mer_agent_pool_res(p, "memory_mb"))) {
			r->total = t.mem;
			r->allocatable = t.amem;
			r->free = json_number_value(
			    json_object_get(cm, "availableMB"));
		}
		if (p)
			p->pending_jobs = (int)json_integer_value(
			    json_object_get(cm, "appsPending"));
	}
	rv = 0;
out_free_replies:
	json_decref(info);
	json_decref(metrics);
	json_decref(nodes);
	json_decref(sched);
	return rv;
}

/* The service name for a stage: a DNS label YARN accepts, the same on
 * every call so that find can ask for it after a restart. */
static void svc_name(const char *stage_id, char *out, size_t n)
{
	mer_agent_job_name(stage_id, out, n);
}

static int svc_path(struct yarn *y, const char *name, char *out, size_t n)
{
	for (const char *p = name; *p; p++)
		if (!islower((unsigned char)*p) &&
		    !isdigit((unsigned char)*p) && *p != '-')
			return MER_EINVAL;
	snprintf(out, n, "/app/v1/services%s%s%s%s", *name ? "/" : "", name,
		 y->user_q[0] ? "?" : "", y->user_q);
	return 0;
}

/*
 * A stage is a YARN service (the Services API of Hadoop >= 3.1, which must
 * be enabled: yarn.webapp.api-service.enable) with one component of
 * `replicas` containers running the command, restart_policy NEVER, so the
 * service's own AM registers with the RM and ends the app once every
 * container has exited. A bare RM app would run the command as an AM that
 * never registers, which the RM fails or expires.
 */
static int yarn_submit(void *inst, const struct mer_agent_stage *st,
		       char *job_id, size_t n, char *err, size_t errlen)
{
	struct yarn *y = inst;
	json_t *body = NULL, *reply = NULL, *comp, *res;
	char name[64], path[256], mem[32];
	long status;
	int rv;

	if (!st->command || !*st->command) {
		snprintf(err, errlen, "yarn: a stage needs a command");
		return MER_EINVAL;
	}
	if (st->gang && st->replicas > 1) {
		/* YARN allocates a service's containers one by one. */
		snprintf(err, errlen,
			 "yarn: gang stages are not supported (YARN has no "
			 "all-or-nothing allocation)");
		return MER_EUNSUPPORTED;
	}
	svc_name(st->id, name, sizeof(name));
	if (strlen(name) >= n) {
		snprintf(err, errlen, "yarn: job id buffer too small");
		return MER_EINVAL;
	}
	rv = MER_ENOMEM;
	snprintf(mem, sizeof(mem), "%lld",
		 (long long)(st->memory_mb > 0 ? st->memory_mb : 1024));
	res =
	    json_pack("{s:I, s:s}", "cpus",
		      (json_int_t)(st->cpus > 0 ? st->cpus : 1), "memory", mem);
	if (res && st->gpus > 0)
		json_object_set_new(res, "additional",
				    json_pack("{s:{s:I, s:s}}", GPU_RES,
					      "value", (json_int_t)st->gpus,
					      "unit", ""));
	comp = json_pack("{s:s, s:I, s:s, s:s, s:o, s:{s:{s:s}}}", "name",
			 "stage", "number_of_containers",
			 (json_int_t)(st->replicas > 0 ? st->replicas : 1),
			 "launch_command", st->command, "restart_policy",
			 "NEVER", "resource", res, "configuration", "env",
			 "MERIDIAN_STAGE_ID", st->id);
	if (comp && st->image && *st->image)
		json_object_set_new(
		    comp, "artifact",
		    json_pack("{s:s, s:s}", "id", st->image, "type", "DOCKER"));
	body = json_pack(
	    "{s:s, s:s, s:s, s:I, s:[o]}", "name", name, "version", "1",
	    "queue",
	    st->pool[0]
		? st->pool
		: (y->cfg->queue && *y->cfg->queue ? y->cfg->queue : "default"),
	    "lifetime",
	    (json_int_t)(st->time_limit_s > 0 ? st->time_limit_s : -1),
	    "components", comp);
	if (!body)
		goto out_free_body;
	svc_path(y, "", path, sizeof(path));
	rv = mer_agent_http_do(&y->http, "POST", path, body, NULL, &status,
			       &reply, err, errlen);
	if (rv == MER_EREMOTE && (status == 409 || status == 400) &&
	    mer_agent_jstr(reply, "diagnostics", NULL) &&
	    strstr(mer_agent_jstr(reply, "diagnostics", NULL), "already"))
		rv = MER_EEXIST;
	if (rv)
		goto out_free_body;
	snprintf(job_id, n, "%s", name);
out_free_body:
	json_decref(body);
	json_decref(reply);
	return rv;
}

/* "Exit code: 3" in an application's diagnostics, else -1. */
static int diag_exit_code(const char *d)
{
	const char *p = d ? strstr(d, "Exit code: ") : NULL;
	char *end;
	long v;

	if (!p)
		return -1;
	v = strtol(p + 11, &end, 10);
	if (end == p + 11 || v < -255 || v > 255)
		return -1;
	return (int)v;
}

/* "application_<cluster timestamp>_<sequence>", digits only. */
static int app_id_ok(const char *id)
{
	const char *p;
	int parts = 0;

	if (!id || strncmp(id, "application_", 12) != 0)
		return 0;
	for (p = id + 12; *p; parts++) {
		if (!isdigit((unsigned char)*p))
			return 0;
		while (isdigit((unsigned char)*p))
			p++;
		if (*p == '_')
			p++;
		else if (*p)
			return 0;
	}
	return parts == 2 && p[-1] != '_';
}

/* A finished service's outcome from its RM app (the Services API reports
 * STOPPED for both a success and a stop). 0 when the app told us. */
static int app_outcome(struct yarn *y, const char *app_id,
		       struct mer_agent_stage_status *out)
{
	json_t *reply = NULL;
	const char *final, *diag;
	char path[128], err[128];
	long st;
	int rv = MER_ENOTFOUND;

	if (!app_id_ok(app_id))
		return MER_ENOTFOUND;
	snprintf(path, sizeof(path), "/ws/v1/cluster/apps/%s", app_id);
	if (get(y, path, NULL, &reply, &st, err, sizeof(err)))
		goto out_free_reply;
	final = mer_agent_jstr(reply, "app", "finalStatus", NULL);
	diag = mer_agent_jstr(reply, "app", "diagnostics", NULL);
	if (!final || !strcmp(final, "UNDEFINED"))
		goto out_free_reply;
	rv = 0;
	if (!strcmp(final, "SUCCEEDED")) {
		out->state = MER_AGENT_STAGE_SUCCEEDED;
		out->exit_code = 0;
	} else if (!strcmp(final, "KILLED") || !strcmp(final, "ENDED")) {
		out->state = MER_AGENT_STAGE_CANCELLED;
	} else {
		out->state = MER_AGENT_STAGE_FAILED;
		out->exit_code = diag_exit_code(diag);
	}
	if (diag && *diag && out->state != MER_AGENT_STAGE_SUCCEEDED)
		snprintf(out->reason, sizeof(out->reason), "%.250s", diag);
out_free_reply:
	json_decref(reply);
	return rv;
}

/* Any container past INIT: the stage runs. */
static int any_container_started(const json_t *svc)
{
	size_t i, j;
	json_t *c, *k;

	json_array_foreach (json_object_get(svc, "components"), i, c) {
		json_array_foreach (json_object_get(c, "containers"), j, k) {
			const char *s = mer_agent_jstr(k, "state", NULL);
			if (s && strcmp(s, "INIT") != 0)
				return 1;
		}
	}
	return 0;
}

static int get_service(struct yarn *y, const char *name, json_t **svc,
		       char *err, size_t errlen)
{
	char path[256];
	long st = 0;
	int rv;

	*svc = NULL;
	if (svc_path(y, name, path, sizeof(path)))
		return MER_EINVAL;
	rv = mer_agent_http_do(&y->http, "GET", path, NULL, NULL, &st, svc, err,
			       errlen);
	if (rv == MER_EREMOTE && st == 404)
		rv = MER_ENOTFOUND;
	if (rv) {
		json_decref(*svc);
		*svc = NULL;
	}
	return rv;
}

static int yarn_status(void *inst, const char *job_id,
		       struct mer_agent_stage_status *out, char *err,
		       size_t errlen)
{
	struct yarn *y = inst;
	json_t *svc = NULL;
	const char *state, *diag;
	int rv;

	memset(out, 0, sizeof(*out));
	out->exit_code = -1;
	if ((rv = get_service(y, job_id, &svc, err, errlen)))
		goto out_free_svc;
	state = mer_agent_jstr(svc, "state", NULL);
	diag = mer_agent_jstr(svc, "diagnostics", NULL);
	if (!state) {
		snprintf(err, errlen, "yarn: service %s without a state",
			 job_id);
		rv = MER_EPARSE;
		goto out_free_svc;
	}
	if (!strcmp(state, "ACCEPTED")) {
		out->state = MER_AGENT_STAGE_PENDING;
	} else if (!strcmp(state, "SUCCEEDED")) {
		out->state = MER_AGENT_STAGE_SUCCEEDED;
		out->exit_code = 0;
	} else if (!strcmp(state, "STOPPED") || !strcmp(state, "FAILED")) {
		if (app_outcome(y, mer_agent_jstr(svc, "id", NULL), out)) {
			/* RM forgot the app: the service state is all. */
			out->state = !strcmp(state, "FAILED")
					 ? MER_AGENT_STAGE_FAILED
					 : MER_AGENT_STAGE_CANCELLED;
		}
	} else {
		/* STARTED, STABLE, FLEX, UPGRADING...: the AM is up. */
		out->state = any_container_started(svc)
				 ? MER_AGENT_STAGE_RUNNING
				 : MER_AGENT_STAGE_PENDING;
	}
	if (!out->reason[0] && diag && *diag &&
	    out->state != MER_AGENT_STAGE_SUCCEEDED)
		snprintf(out->reason, sizeof(out->reason), "%.250s", diag);
out_free_svc:
	json_decref(svc);
	return rv;
}

static int yarn_find(void *inst, const char *stage_id, char *job_id, size_t n,
		     char *err, size_t errlen)
{
	struct yarn *y = inst;
	json_t *svc = NULL, *c;
	char name[64];
	size_t i;
	int rv;

	svc_name(stage_id, name, sizeof(name));
	if ((rv = get_service(y, name, &svc, err, errlen)))
		goto out_free_svc;
	/* The name carries a hash of the stage id; the env settles it. */
	json_array_foreach (json_object_get(svc, "components"), i, c) {
		const char *sid = mer_agent_jstr(c, "configuration", "env",
						 "MERIDIAN_STAGE_ID", NULL);
		if (sid && strcmp(sid, stage_id) != 0) {
			snprintf(err, errlen,
				 "yarn: service %s belongs to stage %s", name,
				 sid);
			rv = MER_EEXIST;
			goto out_free_svc;
		}
	}
	if (strlen(name) >= n) {
		rv = MER_EINVAL;
		goto out_free_svc;
	}
	snprintf(job_id, n, "%s", name);
out_free_svc:
	if (rv == MER_ENOTFOUND)
		snprintf(err, errlen, "yarn: no service for stage %s",
			 stage_id);
	json_decref(svc);
	return rv;
}

/* Stops the service (its AM ends the app, or the RM kills an app whose AM
 * is not up yet). The stopped service stays registered until destroyed. */
static int yarn_cancel(void *inst, const char *job_id, char *err, size_t errlen)
{
	struct yarn *y = inst;
	json_t *body = json_pack("{s:s}", "state", "STOPPED"), *reply = NULL;
	char path[256];
	long st = 0;
	int rv;

	if (!body)
		return MER_ENOMEM;
	if (svc_path(y, job_id, path, sizeof(path))) {
		json_decref(body);
		return MER_EINVAL;
	}
	rv = mer_agent_http_do(&y->http, "PUT", path, body, NULL, &st, &reply,
			       err, errlen);
	if (rv == MER_EREMOTE && st == 404)
		rv = 0;
	json_decref(body);
	json_decref(reply);
	return rv;
}

static void yarn_close(void *inst)
{
	struct yarn *y = inst;

	if (!y)
		return;
	mer_agent_http_clear(&y->http);
	free(y);
}

const struct adapter_ops mer_agent_yarn_ops = {
    .kind = "yarn",
    .open = yarn_open,
    .probe = yarn_probe,
    .submit = yarn_submit,
    .status = yarn_status,
    .find = yarn_find,
    .cancel = yarn_cancel,
    .close = yarn_close,
};
