/*
 * The Kubernetes adapter, through the API server's REST API (bearer token,
 * CA file): capacity from nodes (allocatable cpu, memory, nvidia.com/gpu;
 * the model from the nvidia.com/gpu.product label) less the requests of
 * non-terminated pods; pending pods as demand. A stage becomes a batch/v1
 * Job, or a Volcano Job with minAvailable for gang stages when the site
 * says Volcano is installed. Not a client-go: only what the agent needs.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/log.h"
#include "site-agent/adapter.h"
#include "site-agent/config.h"
#include "site-agent/httpc.h"
#include "site-agent/kutil.h"

#define GPU_RES "nvidia.com/gpu"
#define GPU_LABEL "nvidia.com/gpu.product"
#define STAGE_LABEL "meridian.io/stage"
#define STAGE_ANNOT "meridian.io/stage-id"

/* Node labels that name a node pool, by provider; the first found wins. */
static const char *const pool_labels[] = {
    "meridian.io/pool",
    "cloud.google.com/gke-nodepool",
    "eks.amazonaws.com/nodegroup",
    "kubernetes.azure.com/agentpool",
    "agentpool",
    NULL,
};

struct k8s {
	const struct mer_agent_cfg *cfg;
	struct mer_agent_http http;
	/* From the last probe: which label names pools, and the product
	 * string of each GPU model (a nodeSelector needs the raw value). */
	char pool_label[64];
	struct {
		char model[64];
		char product[128];
	} products[16];
	size_t nproducts;
	char pools[MER_AGENT_MAX_POOLS][MER_AGENT_NAME_MAX];
	size_t npools;
	int probed; /* the fields above are from a successful probe */
};

static int k8s_open(const struct mer_agent_cfg *cfg, void **inst, char *err,
		    size_t errlen)
{
	struct k8s *k = calloc(1, sizeof(*k));
	char *tok = NULL;
	int rv;

	if (!k)
		return MER_ENOMEM;
	k->cfg = cfg;
	if ((!cfg->token || !*cfg->token) && cfg->token_file &&
	    *cfg->token_file &&
	    (rv = mer_agent_read_token(cfg->token_file, &tok))) {
		snprintf(err, errlen, "kubernetes: cannot read token file");
		free(k);
		return rv;
	}
	rv = mer_agent_http_init(&k->http, cfg->url, tok ? tok : cfg->token,
				 cfg->ca_file, cfg->insecure,
				 (long)cfg->timeout_ms);
	mer_agent_free_token(tok);
	if (rv) {
		snprintf(err, errlen, "kubernetes: bad scheduler.url");
		free(k);
		return rv;
	}
	*inst = k;
	return 0;
}

static const char *node_pool(struct k8s *k, const json_t *labels)
{
	for (size_t i = 0; pool_labels[i]; i++) {
		const char *v =
		    json_string_value(json_object_get(labels, pool_labels[i]));
		if (v && *v) {
			if (!k->pool_label[0])
				snprintf(k->pool_label, sizeof(k->pool_label),
					 "%s", pool_labels[i]);
			return v;
		}
	}
	return "default";
}

/* A node takes work when Ready is True, it is not cordoned and has no
 * NoSchedule/NoExecute taint other than the GPU one operators add. */
static int node_schedulable(const json_t *node)
{
	const json_t *conds =
	    mer_agent_jget(node, "status", "conditions", NULL);
	const json_t *taints = mer_agent_jget(node, "spec", "taints", NULL);
	size_t i;
	json_t *c;
	int ready = 0;

	if (json_is_true(mer_agent_jget(node, "spec", "unschedulable", NULL)))
		return 0;
	json_array_foreach (conds, i, c) {
		const char *t = mer_agent_jstr(c, "type", NULL);
		const char *s = mer_agent_jstr(c, "status", NULL);
		if (t && s && strcmp(t, "Ready") == 0)
			ready = strcmp(s, "True") == 0;
	}
	json_array_foreach (taints, i, c) {
		const char *key = mer_agent_jstr(c, "key", NULL);
		const char *eff = mer_agent_jstr(c, "effect", NULL);
		if (key && strcmp(key, GPU_RES) == 0)
			continue;
		if (eff && (strcmp(eff, "NoSchedule") == 0 ||
			    strcmp(eff, "NoExecute") == 0))
			return 0;
	}
	return ready;
}

static void container_requests(const json_t *c, double *cpu, double *mem,
			       double *gpu)
{
	const json_t *rq = mer_agent_jget(c, "resources", "requests", NULL);
	const json_t *lim = mer_agent_jget(c, "resources", "limits", NULL);
	double x;

	*cpu = *mem = *gpu = 0;
	if (!mer_agent_quantity(json_object_get(rq, "cpu"), &x))
		*cpu = x;
	if (!mer_agent_quantity(json_object_get(rq, "memory"), &x))
		*mem = x;
	/* Extended resources may be written as limits only. */
	if (!mer_agent_quantity(json_object_get(rq, GPU_RES), &x) ||
	    !mer_agent_quantity(json_object_get(lim, GPU_RES), &x))
		*gpu = x;
}

/* A pod's requests: the sum over its containers, or the largest init
 * container's when that is larger (the scheduler's rule). */
static void pod_requests(const json_t *pod, double *cpu, double *mem,
			 double *gpu)
{
	const json_t *spec = json_object_get(pod, "spec");
	size_t i;
	json_t *c;
	double a, b, g;

	*cpu = *mem = *gpu = 0;
	json_array_foreach (json_object_get(spec, "containers"), i, c) {
		container_requests(c, &a, &b, &g);
		*cpu += a;
		*mem += b;
		*gpu += g;
	}
	json_array_foreach (json_object_get(spec, "initContainers"), i, c) {
		container_requests(c, &a, &b, &g);
		*cpu = a > *cpu ? a : *cpu;
		*mem = b > *mem ? b : *mem;
		*gpu = g > *gpu ? g : *gpu;
	}
}

struct node_info {
	char name[256];
	char pool[MER_AGENT_NAME_MAX];
	char gpu_kind[80];
	int ok;
};

static int k8s_probe(void *inst, struct mer_agent_capacity *cap, char *err,
		     size_t errlen)
{
	struct k8s *k = inst;
	json_t *nodes = NULL, *pods = NULL, *ver = NULL;
	struct node_info *ni = NULL;
	size_t nn = 0, i;
	json_t *it;
	long st;
	int rv;

	memset(cap, 0, sizeof(*cap));
	k->pool_label[0] = '\0';
	k->nproducts = 0;
	k->probed = 0;
	if ((rv = mer_agent_http_do(&k->http, "GET", "/version", NULL, NULL,
				    &st, &ver, err, errlen)))
		goto out_free_lists;
	snprintf(cap->version, sizeof(cap->version), "%s",
		 mer_agent_jstr(ver, "gitVersion", NULL)
		     ? mer_agent_jstr(ver, "gitVersion", NULL)
		     : "");
	if ((rv = mer_agent_http_do(&k->http, "GET", "/api/v1/nodes", NULL,
				    NULL, &st, &nodes, err, errlen)))
		goto out_free_lists;
	/* Pods that hold resources: not Succeeded, not Failed. */
	if ((rv = mer_agent_http_do(
		 &k->http, "GET",
		 "/api/v1/pods?fieldSelector=status.phase%21%3DSucceeded%2C"
		 "status.phase%21%3DFailed",
		 NULL, NULL, &st, &pods, err, errlen)))
		goto out_free_lists;
	rv = MER_EPARSE;
	if (!json_is_array(json_object_get(nodes, "items")) ||
	    !json_is_array(json_object_get(pods, "items"))) {
		snprintf(err, errlen,
			 "kubernetes: node or pod list without "
			 "items");
		goto out_free_lists;
	}
	nn = json_array_size(json_object_get(nodes, "items"));
	if (!(ni = calloc(nn + 1, sizeof(*ni)))) {
		rv = MER_ENOMEM;
		goto out_free_lists;
	}
	json_array_foreach (json_object_get(nodes, "items"), i, it) {
		const json_t *labels =
		    mer_agent_jget(it, "metadata", "labels", NULL);
		const json_t *alloc =
		    mer_agent_jget(it, "status", "allocatable", NULL);
		const char *name = mer_agent_jstr(it, "metadata", "name", NULL);
		const char *product =
		    json_string_value(json_object_get(labels, GPU_LABEL));
		struct mer_agent_pool *p;
		struct mer_agent_res *rc, *rm, *rg = NULL;
		double cpu = 0, mem = 0, gpu = 0;

		if (!name || !json_is_object(alloc) ||
		    mer_agent_quantity(json_object_get(alloc, "cpu"), &cpu) ||
		    mer_agent_quantity(json_object_get(alloc, "memory"),
				       &mem)) {
			mer_warn("kubernetes: node skipped",
				 "node=%s reason=%s", name ? name : "?",
				 "no name or allocatable cpu/memory");
			continue;
		}
		mer_agent_quantity(json_object_get(alloc, GPU_RES), &gpu);
		snprintf(ni[i].name, sizeof(ni[i].name), "%s", name);
		snprintf(ni[i].pool, sizeof(ni[i].pool), "%s",
			 node_pool(k, labels));
		ni[i].ok = node_schedulable(it);
		if (!(p = mer_agent_cap_pool(cap, ni[i].pool)) ||
		    !(rc = mer_agent_pool_res(p, "cpu")) ||
		    !(rm = mer_agent_pool_res(p, "memory_mb")))
			continue;
		if (gpu > 0) {
			char model[64];
			mer_agent_gpu_model(product ? product : "unknown",
					    model, sizeof(model));
			snprintf(ni[i].gpu_kind, sizeof(ni[i].gpu_kind),
				 "gpu:%s", model);
			rg = mer_agent_pool_res(p, ni[i].gpu_kind);
			size_t j;
			for (j = 0; j < k->nproducts; j++)
				if (!strcmp(k->products[j].model, model))
					break;
			if (j == k->nproducts && product &&
			    j < sizeof(k->products) / sizeof(k->products[0])) {
				snprintf(k->products[j].model,
					 sizeof(k->products[j].model), "%s",
					 model);
				snprintf(k->products[j].product,
					 sizeof(k->products[j].product), "%s",
					 product);
				k->nproducts++;
			}
		}
		mem /= 1048576.0;
		rc->total += cpu;
		rm->total += mem;
		if (rg)
			rg->total += gpu;
		if (ni[i].ok) {
			rc->allocatable += cpu;
			rc->free += cpu;
			rm->allocatable += mem;
			rm->free += mem;
			if (rg) {
				rg->allocatable += gpu;
				rg->free += gpu;
			}
		}
	}
	json_array_foreach (json_object_get(pods, "items"), i, it) {
		const char *node = mer_agent_jstr(it, "spec", "nodeName", NULL);
		const char *phase = mer_agent_jstr(it, "status", "phase", NULL);
		double cpu, mem, gpu;
		struct mer_agent_pool *p = NULL;
		struct node_info *n = NULL;
		struct mer_agent_res *r;

		if (phase && (strcmp(phase, "Succeeded") == 0 ||
			      strcmp(phase, "Failed") == 0))
			continue; /* the selector should have dropped it */
		pod_requests(it, &cpu, &mem, &gpu);
		mem /= 1048576.0;
		if (node && *node) {
			for (size_t j = 0; j < nn; j++)
				if (strcmp(ni[j].name, node) == 0)
					n = &ni[j];
			if (!n || !n->ok ||
			    !(p = mer_agent_cap_pool(cap, n->pool)))
				continue;
			if ((r = mer_agent_pool_res(p, "cpu")))
				r->free -= cpu;
			if ((r = mer_agent_pool_res(p, "memory_mb")))
				r->free -= mem;
			if (gpu > 0 && n->gpu_kind[0] &&
			    (r = mer_agent_pool_res(p, n->gpu_kind)))
				r->free -= gpu;
			continue;
		}
		/* Pending, not bound: demand on the pool it selects, else
		 * on the first pool. */
		const char *want = NULL;
		if (k->pool_label[0])
			want = mer_agent_jstr(it, "spec", "nodeSelector",
					      k->pool_label, NULL);
		if (want)
			p = mer_agent_cap_pool(cap, want);
		else if (cap->npools)
			p = &cap->pools[0];
		if (!p)
			continue;
		p->pending_jobs++;
		if ((r = mer_agent_pool_res(p, "cpu")))
			r->pending += cpu;
		if ((r = mer_agent_pool_res(p, "memory_mb")))
			r->pending += mem;
		if (gpu > 0) {
			const char *prod = mer_agent_jstr(
			    it, "spec", "nodeSelector", GPU_LABEL, NULL);
			char model[64], kind[80];
			if (prod) {
				mer_agent_gpu_model(prod, model, sizeof(model));
				snprintf(kind, sizeof(kind), "gpu:%s", model);
				if ((r = mer_agent_pool_res(p, kind)))
					r->pending += gpu;
			} else {
				for (size_t x = 0; x < p->nres; x++)
					if (!strncmp(p->res[x].kind,
						     "gpu:", 4)) {
						p->res[x].pending += gpu;
						break;
					}
			}
		}
	}
	for (i = 0; i < cap->npools; i++) {
		struct mer_agent_pool *p = &cap->pools[i];
		for (size_t x = 0; x < p->nres; x++)
			if (p->res[x].free < 0)
				p->res[x].free = 0;
		/* No queue model here: a rough wait of a minute per pending
		 * pod beyond what is free, which the broker corrects with
		 * learned waits. */
		p->est_wait_s = p->pending_jobs * 60.0;
	}
	k->npools = 0;
	for (i = 0; i < cap->npools; i++)
		snprintf(k->pools[k->npools++], MER_AGENT_NAME_MAX, "%s",
			 cap->pools[i].name);
	k->probed = 1;
	rv = 0;
out_free_lists:
	free(ni);
	json_decref(nodes);
	json_decref(pods);
	json_decref(ver);
	return rv;
}

static int quantity_str(char *out, size_t n, double x)
{
	return snprintf(out, n, "%.0f", x) >= (int)n ? MER_ETOOBIG : 0;
}

static json_t *pod_template(struct k8s *k, const struct mer_agent_stage *st,
			    const char *name)
{
	char cpu[32], mem[40], gpu[32];
	json_t *req, *lim, *tmpl, *sel;
	const char *image = st->image && *st->image ? st->image : "busybox";

	quantity_str(cpu, sizeof(cpu), st->cpus > 0 ? (double)st->cpus : 1);
	req = json_pack("{s:s}", "cpu", cpu);
	lim = json_object();
	if (st->memory_mb > 0) {
		snprintf(mem, sizeof(mem), "%lldMi", (long long)st->memory_mb);
		json_object_set_new(req, "memory", json_string(mem));
		json_object_set_new(lim, "memory", json_string(mem));
	}
	if (st->gpus > 0) {
		quantity_str(gpu, sizeof(gpu), (double)st->gpus);
		json_object_set_new(req, GPU_RES, json_string(gpu));
		json_object_set_new(lim, GPU_RES, json_string(gpu));
	}
	sel = json_object();
	if (st->pool[0] && k->pool_label[0])
		json_object_set_new(sel, k->pool_label, json_string(st->pool));
	if (st->gpus > 0 && st->gpu_model[0]) {
		for (size_t i = 0; i < k->nproducts; i++)
			if (!strcmp(k->products[i].model, st->gpu_model))
				json_object_set_new(
				    sel, GPU_LABEL,
				    json_string(k->products[i].product));
	}
	tmpl = json_pack(
	    "{s:{s:{s:s}}, s:{s:s, s:o, s:[{s:s, s:s, s:[s,s,s], s:{s:o, "
	    "s:o}}]}}",
	    "metadata", "labels", STAGE_LABEL, name, "spec", "restartPolicy",
	    "Never", "nodeSelector", sel, "containers", "name", "stage",
	    "image", image, "command", "/bin/sh", "-c", st->command,
	    "resources", "requests", req, "limits", lim);
	if (tmpl && st->workdir && *st->workdir)
		json_object_set_new(
		    json_array_get(
			mer_agent_jget(tmpl, "spec", "containers", NULL), 0),
		    "workingDir", json_string(st->workdir));
	return tmpl;
}

/*
 * The pool and GPU model become nodeSelector entries whose label and raw
 * product value only a probe knows; a selector silently left out would
 * run the stage on the wrong nodes. So: probe first when not done yet, and
 * refuse a pool or model this cluster does not have (MER_ENOTFOUND).
 */
static int check_placement(struct k8s *k, const struct mer_agent_stage *st,
			   char *err, size_t errlen)
{
	struct mer_agent_capacity *cap;
	size_t i;
	int rv;

	if (!k->probed) {
		if (!(cap = calloc(1, sizeof(*cap))))
			return MER_ENOMEM;
		rv = k8s_probe(k, cap, err, errlen);
		free(cap);
		if (rv)
			return rv;
	}
	if (st->pool[0]) {
		for (i = 0; i < k->npools; i++)
			if (!strcmp(k->pools[i], st->pool))
				break;
		if (i == k->npools) {
			snprintf(err, errlen,
				 "kubernetes: no node pool %s in this "
				 "cluster",
				 st->pool);
			return MER_ENOTFOUND;
		}
	}
	if (st->gpus > 0 && st->gpu_model[0]) {
		for (i = 0; i < k->nproducts; i++)
			if (!strcmp(k->products[i].model, st->gpu_model))
				break;
		if (i == k->nproducts) {
			snprintf(err, errlen,
				 "kubernetes: no node has GPU model %s "
				 "(label " GPU_LABEL ")",
				 st->gpu_model);
			return MER_ENOTFOUND;
		}
	}
	return 0;
}

static int k8s_submit(void *inst, const struct mer_agent_stage *st,
		      char *job_id, size_t n, char *err, size_t errlen)
{
	struct k8s *k = inst;
	const char *ns = k->cfg->namespace_;
	char name[64], path[512];
	json_t *body = NULL, *tmpl, *reply = NULL;
	json_int_t reps = st->replicas > 0 ? st->replicas : 1;
	int volcano = st->gang && k->cfg->volcano;
	long status;
	int rv = MER_ENOMEM;

	if (!st->command || !*st->command) {
		snprintf(err, errlen, "kubernetes: a stage needs a command");
		return MER_EINVAL;
	}
	if ((rv = check_placement(k, st, err, errlen)))
		return rv;
	rv = MER_ENOMEM;
	mer_agent_job_name(st->id, name, sizeof(name));
	if (!(tmpl = pod_template(k, st, name)))
		goto out_free_body;
	if (volcano) {
		/* Gang: Volcano starts the pods together or not at all. */
		body = json_pack(
		    "{s:s, s:s, s:{s:s, s:{s:s}, s:{s:s}}, s:{s:I, s:s, "
		    "s:s, s:I, s:[{s:s, s:I, s:o}], s:[{s:s, s:s}]}}",
		    "apiVersion", "batch.volcano.sh/v1alpha1", "kind", "Job",
		    "metadata", "name", name, "labels", STAGE_LABEL, name,
		    "annotations", STAGE_ANNOT, st->id, "spec", "minAvailable",
		    reps, "schedulerName", "volcano", "queue",
		    k->cfg->queue && *k->cfg->queue ? k->cfg->queue : "default",
		    "maxRetry", (json_int_t)0, "tasks", "name", "stage",
		    "replicas", reps, "template", tmpl, "policies", "event",
		    "PodEvicted", "action", "AbortJob");
		snprintf(path, sizeof(path),
			 "/apis/batch.volcano.sh/v1alpha1/namespaces/%s/jobs",
			 ns);
	} else {
		body = json_pack(
		    "{s:s, s:s, s:{s:s, s:{s:s}, s:{s:s}}, s:{s:I, s:I, "
		    "s:I, s:o}}",
		    "apiVersion", "batch/v1", "kind", "Job", "metadata", "name",
		    name, "labels", STAGE_LABEL, name, "annotations",
		    STAGE_ANNOT, st->id, "spec", "backoffLimit", (json_int_t)0,
		    "completions", reps, "parallelism", reps, "template", tmpl);
		snprintf(path, sizeof(path),
			 "/apis/batch/v1/namespaces/%s/jobs", ns);
		if (body && st->time_limit_s > 0)
			json_object_set_new(json_object_get(body, "spec"),
					    "activeDeadlineSeconds",
					    json_integer(st->time_limit_s));
	}
	if (!body)
		goto out_free_body;
	rv = mer_agent_http_do(&k->http, "POST", path, body, NULL, &status,
			       &reply, err, errlen);
	if (rv == MER_EREMOTE && status == 409)
		rv = MER_EEXIST;
	if (rv)
		goto out_free_body;
	snprintf(job_id, n, "%s/%s", volcano ? "volcano" : "batch", name);
out_free_body:
	json_decref(body);
	json_decref(reply);
	return rv;
}

static int job_path(struct k8s *k, const char *job_id, char *path, size_t n,
		    int *volcano)
{
	const char *slash = strchr(job_id, '/');

	if (!slash || !slash[1] || strchr(slash + 1, '/'))
		return MER_EINVAL;
	*volcano = strncmp(job_id, "volcano/", 8) == 0;
	if (!*volcano && strncmp(job_id, "batch/", 6) != 0)
		return MER_EINVAL;
	snprintf(path, n,
		 *volcano ? "/apis/batch.volcano.sh/v1alpha1/namespaces/%s/"
			    "jobs/%s"
			  : "/apis/batch/v1/namespaces/%s/jobs/%s",
		 k->cfg->namespace_, slash + 1);
	return 0;
}

/* Exit code of a failed Job's pod (the Job itself does not carry it). */
static int failed_exit_code(struct k8s *k, const char *name)
{
	char path[512], err[256];
	json_t *pods = NULL, *it;
	long st;
	size_t i, j;
	int code = -1;

	snprintf(path, sizeof(path),
		 "/api/v1/namespaces/%s/pods?labelSelector=" STAGE_LABEL
		 "%%3D%s",
		 k->cfg->namespace_, name);
	if (mer_agent_http_do(&k->http, "GET", path, NULL, NULL, &st, &pods,
			      err, sizeof(err)))
		goto out_free_pods;
	json_array_foreach (json_object_get(pods, "items"), i, it) {
		json_t *cs;
		json_array_foreach (
		    mer_agent_jget(it, "status", "containerStatuses", NULL), j,
		    cs) {
			json_t *ec = mer_agent_jget(cs, "state", "terminated",
						    "exitCode", NULL);
			if (json_is_integer(ec) && json_integer_value(ec) != 0)
				code = (int)json_integer_value(ec);
		}
	}
out_free_pods:
	json_decref(pods);
	return code;
}

static int k8s_status(void *inst, const char *job_id,
		      struct mer_agent_stage_status *out, char *err,
		      size_t errlen)
{
	struct k8s *k = inst;
	char path[512];
	json_t *job = NULL, *c;
	long st;
	int volcano, rv;
	size_t i;

	memset(out, 0, sizeof(*out));
	out->exit_code = -1;
	if ((rv = job_path(k, job_id, path, sizeof(path), &volcano))) {
		snprintf(err, errlen, "kubernetes: bad job id %s", job_id);
		return rv;
	}
	rv = mer_agent_http_do(&k->http, "GET", path, NULL, NULL, &st, &job,
			       err, errlen);
	if (rv == MER_EREMOTE && st == 404)
		rv = MER_ENOTFOUND;
	if (rv)
		goto out_free_job;
	if (volcano) {
		const char *ph =
		    mer_agent_jstr(job, "status", "state", "phase", NULL);
		if (!ph)
			out->state = MER_AGENT_STAGE_PENDING;
		else if (!strcmp(ph, "Completed"))
			out->state = MER_AGENT_STAGE_SUCCEEDED;
		else if (!strcmp(ph, "Failed"))
			out->state = MER_AGENT_STAGE_FAILED;
		else if (!strcmp(ph, "Aborted") || !strcmp(ph, "Aborting") ||
			 !strcmp(ph, "Terminated") ||
			 !strcmp(ph, "Terminating"))
			out->state = MER_AGENT_STAGE_CANCELLED;
		else if (!strcmp(ph, "Running") || !strcmp(ph, "Completing"))
			out->state = MER_AGENT_STAGE_RUNNING;
		else
			out->state = MER_AGENT_STAGE_PENDING;
		snprintf(
		    out->reason, sizeof(out->reason), "%s",
		    mer_agent_jstr(job, "status", "state", "reason", NULL)
			? mer_agent_jstr(job, "status", "state", "reason", NULL)
			: "");
	} else {
		json_t *active = mer_agent_jget(job, "status", "active", NULL);
		json_t *ready = mer_agent_jget(job, "status", "ready", NULL);
		out->state = MER_AGENT_STAGE_PENDING;
		if (json_integer_value(active) > 0 &&
		    (!ready || json_integer_value(ready) > 0))
			out->state = MER_AGENT_STAGE_RUNNING;
		json_array_foreach (
		    mer_agent_jget(job, "status", "conditions", NULL), i, c) {
			const char *t = mer_agent_jstr(c, "type", NULL);
			const char *s = mer_agent_jstr(c, "status", NULL);
			const char *why = mer_agent_jstr(c, "reason", NULL);
			if (!t || !s || strcmp(s, "True"))
				continue;
			if (!strcmp(t, "Complete")) {
				out->state = MER_AGENT_STAGE_SUCCEEDED;
			} else if (!strcmp(t, "Failed")) {
				out->state = MER_AGENT_STAGE_FAILED;
				snprintf(out->reason, sizeof(out->reason), "%s",
					 why ? why : "Failed");
			}
		}
	}
	if (out->state == MER_AGENT_STAGE_SUCCEEDED)
		out->exit_code = 0;
	else if (out->state == MER_AGENT_STAGE_FAILED)
		out->exit_code = failed_exit_code(k, strchr(job_id, '/') + 1);
out_free_job:
	json_decref(job);
	return rv;
}

static int k8s_find(void *inst, const char *stage_id, char *job_id, size_t n,
		    char *err, size_t errlen)
{
	struct k8s *k = inst;
	char name[64], id[80];
	const char *kinds[] = {"batch", "volcano"};

	mer_agent_job_name(stage_id, name, sizeof(name));
	for (int i = 0; i < (k->cfg->volcano ? 2 : 1); i++) {
		struct mer_agent_stage_status s;
		int rv;
		snprintf(id, sizeof(id), "%s/%s", kinds[i], name);
		rv = k8s_status(k, id, &s, err, errlen);
		if (rv == 0) {
			snprintf(job_id, n, "%s", id);
			return 0;
		}
		if (rv != MER_ENOTFOUND)
			return rv;
	}
	snprintf(err, errlen, "kubernetes: no job for stage %s", stage_id);
	return MER_ENOTFOUND;
}

static int k8s_cancel(void *inst, const char *job_id, char *err, size_t errlen)
{
	struct k8s *k = inst;
	char path[512];
	json_t *body, *reply = NULL;
	long st;
	int volcano, rv;

	if ((rv = job_path(k, job_id, path, sizeof(path), &volcano)))
		return rv;
	/* Background: the Job goes now, its pods right after (without a
	 * policy batch/v1 would orphan the pods). */
	body = json_pack("{s:s, s:s, s:s}", "kind", "DeleteOptions",
			 "apiVersion", "v1", "propagationPolicy", "Background");
	if (!body)
		return MER_ENOMEM;
	rv = mer_agent_http_do(&k->http, "DELETE", path, body, NULL, &st,
			       &reply, err, errlen);
	if (rv == MER_EREMOTE && st == 404)
		rv = 0;
	json_decref(body);
	json_decref(reply);
	return rv;
}

static void k8s_close(void *inst)
{
	struct k8s *k = inst;

	if (!k)
		return;
	mer_agent_http_clear(&k->http);
	free(k);
}

const struct adapter_ops mer_agent_k8s_ops = {
    .kind = "kubernetes",
    .open = k8s_open,
    .probe = k8s_probe,
    .submit = k8s_submit,
    .status = k8s_status,
    .find = k8s_find,
    .cancel = k8s_cancel,
    .close = k8s_close,
};
