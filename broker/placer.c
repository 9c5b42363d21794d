/*
 * The placer: one thread that places submitted jobs with the engine
 * (policy/place.h) against the federation the broker knows, writes each
 * placement into the job record with a txn guarded by the record's
 * revision, and retries jobs left pending as capacity or policy changes
 * (stages sent back by a retry, a lost site or preemption are placed again
 * around the fixed ones). It also keeps the job-state counts behind
 * /metrics, the live preemptible stages and the learned history in
 * memory. Dispatch to agents is not here.
 */
#include "broker/broker.h"
#include "broker/dispatch.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/err.h"
#include "common/log.h"

static const char *const states[] = {
    MER_ST_PENDING,   MER_ST_PLACED, MER_ST_DISPATCHED, MER_ST_RUNNING,
    MER_ST_SUCCEEDED, MER_ST_FAILED, MER_ST_CANCELLED};
#define NSTATES (sizeof(states) / sizeof(states[0]))

struct jt_entry {
	char id[MER_JOB_ID_SIZE];
	int8_t state;	 /* index in states, -1 unknown */
	uint16_t tenant; /* index in job_table.tenants; 0xffff unknown */
	uint16_t stages[NSTATES];
};

#define MAX_TENANTS 4096
/* Pending jobs looked at again per periodic retry, so that a large backlog
 * costs bounded work per interval (the rest wait for later rounds). */
#define RETRY_BATCH 2048

struct job_table {
	struct jt_entry *e;
	size_t cap, n;
	char (*tenants)[MER_TENANT_NAME_MAX];
	size_t ntenants;
	size_t retry_from; /* where the next retry sweep starts */
};

static uint16_t tenant_index(struct job_table *t, const char *name)
{
	for (size_t i = 0; i < t->ntenants; i++)
		if (strcmp(t->tenants[i], name) == 0)
			return (uint16_t)i;
	if (t->ntenants == MAX_TENANTS)
		return 0xffff;
	if (!t->tenants) {
		t->tenants = calloc(MAX_TENANTS, sizeof(*t->tenants));
		if (!t->tenants)
			return 0xffff;
	}
	snprintf(t->tenants[t->ntenants], MER_TENANT_NAME_MAX, "%s", name);
	return (uint16_t)t->ntenants++;
}

static int state_index(const char *s)
{
	for (size_t i = 0; s && i < NSTATES; i++)
		if (strcmp(s, states[i]) == 0)
			return (int)i;
	return -1;
}

static size_t hash_id(const char *id)
{
	size_t h = 1469598103934665603ull;
	for (; *id; id++)
		h = (h ^ (unsigned char)*id) * 1099511628211ull;
	return h;
}

static struct jt_entry *jt_find(struct job_table *t, const char *id, int add)
{
	if (add && (t->n + 1) * 10 > t->cap * 7) {
		size_t ncap = t->cap ? 2 * t->cap : 1024;
		struct jt_entry *ne = calloc(ncap, sizeof(*ne));
		if (!ne)
			return NULL;
		for (size_t i = 0; i < t->cap; i++) {
			if (!t->e[i].id[0])
				continue;
			size_t j = hash_id(t->e[i].id) & (ncap - 1);
			while (ne[j].id[0])
				j = (j + 1) & (ncap - 1);
			ne[j] = t->e[i];
		}
		free(t->e);
		t->e = ne;
		t->cap = ncap;
	}
	if (!t->cap)
		return NULL;
	size_t j = hash_id(id) & (t->cap - 1);
	while (t->e[j].id[0]) {
		if (strcmp(t->e[j].id, id) == 0)
			return &t->e[j];
		j = (j + 1) & (t->cap - 1);
	}
	if (!add)
		return NULL;
	snprintf(t->e[j].id, sizeof(t->e[j].id), "%s", id);
	t->e[j].state = -1;
	t->e[j].tenant = 0xffff;
	t->n++;
	return &t->e[j];
}

/* ---- live preemptible stages ---------------------------------------------
 * The agents do not know classes, so the broker adds what its own
 * preemptible stages hold to each site's summary (the engine may then
 * count it for classes allowed to preempt), and picks the victims when a
 * placement relies on it. Kept from every record the placer is told of. */

struct pre_stage {
	char job[MER_JOB_ID_SIZE];
	char stage[128];
	char site[MER_LINK_NAME_MAX];
	char gpu_model[64];
	int prio;
	double cpu, mem, gpu; /* whole stage: per replica x replicas */
	long long since;      /* placed_at: newest are preempted first */
};

struct pre_table {
	struct pre_stage *e;
	size_t n, cap;
};

static const json_t *spec_stage(const json_t *rec, const char *name)
{
	const json_t *v;
	size_t i;

	json_array_foreach (
	    json_object_get(json_object_get(rec, "spec"), "stages"), i, v) {
		const char *n = json_string_value(json_object_get(v, "name"));
		if (n && name && strcmp(n, name) == 0)
			return v;
	}
	return NULL;
}

/* pmu held. */
static void pre_note(struct mer_broker *b, const json_t *rec, const char *id)
{
	struct pre_table *t = b->pre;
	const json_t *s;
	size_t i, k = 0;
	int prio = -1;

	if (!t && !(t = b->pre = calloc(1, sizeof(*b->pre))))
		return;
	for (i = 0; i < t->n; i++)
		if (strcmp(t->e[i].job, id) != 0)
			t->e[k++] = t->e[i];
	t->n = k;
	if (mer_prio_parse(json_string_value(json_object_get(rec, "priority")),
			   &prio) != 0)
		return;
	json_array_foreach (json_object_get(rec, "stages"), i, s) {
		const char *st = json_string_value(json_object_get(s, "state"));
		const char *name =
		    json_string_value(json_object_get(s, "name"));
		const char *site =
		    json_string_value(json_object_get(s, "site"));
		const json_t *sp = spec_stage(rec, name);
		if (!st || !site || !sp ||
		    !json_is_true(json_object_get(sp, "preemptible")) ||
		    json_is_true(json_object_get(s, "cancel_requested")) ||
		    !(strcmp(st, MER_ST_PLACED) == 0 ||
		      strcmp(st, MER_ST_DISPATCHED) == 0 ||
		      strcmp(st, MER_ST_RUNNING) == 0))
			continue;
		if (t->n == t->cap) {
			size_t nc = t->cap ? 2 * t->cap : 32;
			void *p = realloc(t->e, nc * sizeof(*t->e));
			if (!p)
				return;
			t->e = p;
			t->cap = nc;
		}
		struct pre_stage *e = &t->e[t->n++];
		const json_t *res = json_object_get(sp, "resources");
		const json_t *gpu = json_object_get(res, "gpu");
		json_int_t reps =
		    json_integer_value(json_object_get(sp, "replicas"));
		double r = reps > 0 ? (double)reps : 1;
		memset(e, 0, sizeof(*e));
		snprintf(e->job, sizeof(e->job), "%s", id);
		snprintf(e->stage, sizeof(e->stage), "%s", name);
		snprintf(e->site, sizeof(e->site), "%s", site);
		/* The first acceptable model: the one the launch asks for. */
		snprintf(e->gpu_model, sizeof(e->gpu_model), "%s",
			 json_string_value(
			     json_array_get(json_object_get(gpu, "models"), 0))
			     ? json_string_value(json_array_get(
				   json_object_get(gpu, "models"), 0))
			     : "");
		e->prio = prio;
		e->cpu = json_number_value(json_object_get(res, "cpu")) * r;
		e->mem =
		    json_number_value(json_object_get(res, "memory_mb")) * r;
		e->gpu =
		    (double)json_integer_value(json_object_get(gpu, "count")) *
		    r;
		e->since = json_integer_value(json_object_get(s, "placed_at"));
	}
}

/* Adds amount of class prio to the first pool of s with resource kind. */
static void pre_add(json_t *s, const char *kind, int prio, double amount)
{
	json_t *pool;
	size_t i;

	if (amount <= 0)
		return;
	json_array_foreach (json_object_get(s, "pools"), i, pool) {
		json_t *r =
		    json_object_get(json_object_get(pool, "resources"), kind);
		if (!json_is_object(r))
			continue;
		json_t *pre = json_object_get(r, "preemptible");
		if (!json_is_object(pre)) {
			pre = json_object();
			json_object_set_new(r, "preemptible", pre);
		}
		const char *cl = mer_prio_name(prio);
		double old = json_number_value(json_object_get(pre, cl));
		json_object_set_new(pre, cl, json_real(old + amount));
		return;
	}
}

/* ---- output replicas -------------------------------------------------------
 * Outputs of succeeded stages, stored at "<p>/replicas/<site>/<name>" by
 * dispatch and kept here (loaded at start) so that every snapshot lists
 * them in their site's datasets: later stages and jobs reading them are
 * drawn to where they are (data gravity) without an etcd read per
 * snapshot. */

struct rep_entry {
	char site[MER_LINK_NAME_MAX];
	char name[256];
	json_t *ds; /* the catalog entry: name, bytes, tags */
};

struct rep_table {
	struct rep_entry *e;
	size_t n, cap;
};

/* pmu held. */
static void rep_put(struct mer_broker *b, const char *site, const json_t *o)
{
	struct rep_table *t = b->reps;
	const char *name = json_string_value(json_object_get(o, "name"));
	const json_t *tags = json_object_get(o, "tags");
	struct rep_entry *e = NULL;
	json_t *ds;

	if (!site || !name || strlen(site) >= sizeof(e->site) ||
	    strlen(name) >= sizeof(e->name) ||
	    !json_is_number(json_object_get(o, "bytes")))
		return;
	if (!t && !(t = b->reps = calloc(1, sizeof(*b->reps))))
		return;
	/* "o" takes the tags' reference, also when packing fails. */
	ds = json_pack("{s:s, s:f, s:o}", "name", name, "bytes",
		       json_number_value(json_object_get(o, "bytes")), "tags",
		       json_is_array(tags) ? json_deep_copy(tags)
					   : json_array());
	if (!ds)
		return;
	for (size_t i = 0; i < t->n && !e; i++)
		if (strcmp(t->e[i].site, site) == 0 &&
		    strcmp(t->e[i].name, name) == 0)
			e = &t->e[i];
	if (!e) {
		if (t->n == t->cap) {
			size_t nc = t->cap ? 2 * t->cap : 32;
			void *p = realloc(t->e, nc * sizeof(*t->e));
			if (!p) {
				json_decref(ds);
				return;
			}
			t->e = p;
			t->cap = nc;
		}
		e = &t->e[t->n++];
		memset(e, 0, sizeof(*e));
		snprintf(e->site, sizeof(e->site), "%s", site);
		snprintf(e->name, sizeof(e->name), "%s", name);
	}
	json_decref(e->ds);
	e->ds = ds;
}

void mer_placer_replica_note(struct mer_broker *b, const char *site,
			     const json_t *o)
{
	pthread_mutex_lock(&b->pmu);
	rep_put(b, site, o);
	pthread_mutex_unlock(&b->pmu);
}

void mer_placer_replica_forget(struct mer_broker *b, const char *site)
{
	size_t kept = 0, gone = 0;

	pthread_mutex_lock(&b->pmu);
	for (size_t i = 0; b->reps && i < b->reps->n; i++) {
		struct rep_entry *e = &b->reps->e[i];
		if (strcmp(e->site, site) == 0) {
			json_decref(e->ds);
			gone++;
			continue;
		}
		if (kept != i)
			b->reps->e[kept] = *e;
		kept++;
	}
	if (b->reps)
		b->reps->n = kept;
	pthread_mutex_unlock(&b->pmu);
	if (gone)
		mer_info("output replicas forgotten", "site=%s entries=%zu",
			 site, gone);
}

struct load_ctx {
	struct mer_broker *b;
	size_t total;
};

/* One "<p>/replicas/<site>/<name>" record. */
static void replica_load_one(void *arg, const char *rest, const json_t *o)
{
	struct load_ctx *c = arg;
	char site[MER_LINK_NAME_MAX];
	const char *slash = strchr(rest, '/');

	if (!slash || (size_t)(slash - rest) >= sizeof(site) ||
	    !json_is_object(o))
		return;
	snprintf(site, sizeof(site), "%.*s", (int)(slash - rest), rest);
	pthread_mutex_lock(&c->b->pmu);
	rep_put(c->b, site, o);
	pthread_mutex_unlock(&c->b->pmu);
	c->total++;
}

static void replicas_load_all(struct mer_broker *b)
{
	struct load_ctx c = {.b = b};

	mer_store_scan_prefix(b->store, "replicas/", replica_load_one, &c);
	if (c.total)
		mer_info("output replicas loaded", "entries=%zu", c.total);
}

static int has_dataset(const json_t *arr, const char *name)
{
	const json_t *v;
	size_t i;

	json_array_foreach (arr, i, v)
		if (strcmp(json_string_value(json_object_get(v, "name"))
			       ? json_string_value(json_object_get(v, "name"))
			       : "",
			   name) == 0)
			return 1;
	return 0;
}

/* pmu held. */
static void rep_add(struct mer_broker *b, const char *site, json_t *s)
{
	json_t *arr = json_object_get(s, "datasets");

	for (size_t i = 0; b->reps && i < b->reps->n; i++) {
		const struct rep_entry *e = &b->reps->e[i];
		if (strcmp(e->site, site) != 0)
			continue;
		if (!json_is_array(arr)) {
			arr = json_array();
			if (!arr || json_object_set_new(s, "datasets", arr))
				return;
		}
		if (!has_dataset(arr, e->name))
			json_array_append_new(arr, json_deep_copy(e->ds));
	}
}

void mer_placer_annotate_site(struct mer_broker *b, const char *site, json_t *s)
{
	pthread_mutex_lock(&b->pmu);
	rep_add(b, site, s);
	for (size_t i = 0; b->pre && i < b->pre->n; i++) {
		const struct pre_stage *e = &b->pre->e[i];
		char kind[80];
		if (strcmp(e->site, site) != 0)
			continue;
		pre_add(s, "cpu", e->prio, e->cpu);
		pre_add(s, "memory_mb", e->prio, e->mem);
		if (e->gpu_model[0]) {
			snprintf(kind, sizeof(kind), "gpu:%s", e->gpu_model);
			pre_add(s, kind, e->prio, e->gpu);
		}
	}
	pthread_mutex_unlock(&b->pmu);
}

static int pre_newest_first(const void *a, const void *b)
{
	const struct pre_stage *x = a, *y = b;
	return x->since < y->since ? 1 : x->since > y->since ? -1 : 0;
}

/*
 * A placement at site relies on preemption: the stages it may displace
 * there (classes the policy lets prio preempt; least urgent class first,
 * newest first within it) are sent back to pending until what they free
 * covers the stage's GPUs (or, for a stage without GPUs, its cores).
 */
static void preempt_for(struct mer_broker *b, const struct mer_policy *pol,
			int prio, const char *site, double cpu, double gpu,
			const char *by)
{
	struct pre_stage *v = NULL;
	size_t n = 0;

	pthread_mutex_lock(&b->pmu);
	if (b->pre && b->pre->n)
		v = calloc(b->pre->n, sizeof(*v));
	for (size_t i = 0; v && i < b->pre->n; i++) {
		const struct pre_stage *e = &b->pre->e[i];
		if (strcmp(e->site, site) == 0 && pol->preempt[prio][e->prio])
			v[n++] = *e;
	}
	pthread_mutex_unlock(&b->pmu);
	if (n)
		qsort(v, n, sizeof(*v), pre_newest_first);
	double freed_cpu = 0, freed_gpu = 0;
	for (int cl = MER_PRIO_COUNT - 1; cl >= 0; cl--) {
		for (size_t i = 0; i < n; i++) {
			if (v[i].prio != cl)
				continue;
			if (gpu > 0 ? freed_gpu >= gpu : freed_cpu >= cpu)
				break;
			if (gpu > 0 && v[i].gpu <= 0)
				continue;
			if (mer_dispatch_preempt(b, v[i].job, v[i].stage, site,
						 by) == 0) {
				freed_cpu += v[i].cpu;
				freed_gpu += v[i].gpu;
			}
		}
	}
	free(v);
}

/* ---- live GPU usage by model ----------------------------------------------
 * GPUs each job's dispatched and running stages hold (count x replicas of
 * the first acceptable model, the one the launch asks for), so that the
 * policy's per-model GPU quotas count what earlier rounds placed. */

struct gpu_use {
	char job[MER_JOB_ID_SIZE];
	uint16_t tenant; /* index in job_table.tenants */
	char model[64];
	double gpus;
};

struct gpu_table {
	struct gpu_use *e;
	size_t n, cap;
};

/* pmu held. */
static void gpu_note(struct mer_broker *b, const json_t *rec, const char *id,
		     uint16_t tenant)
{
	struct gpu_table *t = b->gpus;
	const json_t *s;
	size_t i, k = 0;

	if (!t && !(t = b->gpus = calloc(1, sizeof(*b->gpus))))
		return;
	for (i = 0; i < t->n; i++)
		if (strcmp(t->e[i].job, id) != 0)
			t->e[k++] = t->e[i];
	t->n = k;
	if (tenant == 0xffff)
		return;
	json_array_foreach (json_object_get(rec, "stages"), i, s) {
		const char *st = json_string_value(json_object_get(s, "state"));
		const json_t *sp = spec_stage(
		    rec, json_string_value(json_object_get(s, "name")));
		const json_t *gpu =
		    json_object_get(json_object_get(sp, "resources"), "gpu");
		const char *model = json_string_value(
		    json_array_get(json_object_get(gpu, "models"), 0));
		json_int_t cnt =
		    json_integer_value(json_object_get(gpu, "count"));
		json_int_t reps =
		    json_integer_value(json_object_get(sp, "replicas"));
		if (!st || !model || cnt <= 0 ||
		    !(strcmp(st, MER_ST_DISPATCHED) == 0 ||
		      strcmp(st, MER_ST_RUNNING) == 0))
			continue;
		if (t->n == t->cap) {
			size_t nc = t->cap ? 2 * t->cap : 32;
			void *p = realloc(t->e, nc * sizeof(*t->e));
			if (!p)
				return;
			t->e = p;
			t->cap = nc;
		}
		struct gpu_use *e = &t->e[t->n++];
		memset(e, 0, sizeof(*e));
		snprintf(e->job, sizeof(e->job), "%s", id);
		snprintf(e->model, sizeof(e->model), "%s", model);
		e->tenant = tenant;
		e->gpus = (double)cnt * (double)(reps > 0 ? reps : 1);
	}
}

/* Per tenant and model, as of a round's start (job left empty). */
static struct gpu_use *gpu_snapshot(struct mer_broker *b, size_t *n)
{
	struct gpu_use *out = NULL;

	*n = 0;
	pthread_mutex_lock(&b->pmu);
	if (b->gpus && b->gpus->n)
		out = calloc(b->gpus->n, sizeof(*out));
	for (size_t i = 0; out && i < b->gpus->n; i++) {
		const struct gpu_use *e = &b->gpus->e[i];
		size_t j = 0;
		while (j < *n && !(out[j].tenant == e->tenant &&
				   strcmp(out[j].model, e->model) == 0))
			j++;
		if (j == *n) {
			out[j].tenant = e->tenant;
			memcpy(out[j].model, e->model, sizeof(out[j].model));
			(*n)++;
		}
		out[j].gpus += e->gpus;
	}
	pthread_mutex_unlock(&b->pmu);
	return out;
}

/* The engine's usage entries of tenant (pointing into snap); NULL when
 * none. */
static struct mer_usage_gpu *gpu_usage_of(struct mer_broker *b,
					  const struct gpu_use *snap,
					  size_t nsnap, const char *tenant,
					  size_t *n)
{
	struct mer_usage_gpu *u = NULL;

	*n = 0;
	if (!nsnap || !tenant)
		return NULL;
	pthread_mutex_lock(&b->pmu);
	for (size_t i = 0; b->jobs && i < nsnap; i++) {
		if (snap[i].tenant >= b->jobs->ntenants ||
		    strcmp(b->jobs->tenants[snap[i].tenant], tenant) != 0)
			continue;
		if (!u && !(u = calloc(nsnap, sizeof(*u))))
			break;
		u[*n].model = snap[i].model;
		u[*n].gpus = snap[i].gpus;
		(*n)++;
	}
	pthread_mutex_unlock(&b->pmu);
	return u;
}

void mer_placer_note(struct mer_broker *b, const json_t *rec)
{
	const char *id = json_string_value(json_object_get(rec, "id"));
	const json_t *stages = json_object_get(rec, "stages");
	struct jt_entry *e;
	size_t i;
	json_t *s;

	if (!id)
		return;
	pthread_mutex_lock(&b->pmu);
	if (!b->jobs)
		b->jobs = calloc(1, sizeof(*b->jobs));
	e = b->jobs ? jt_find(b->jobs, id, 1) : NULL;
	pre_note(b, rec, id);
	if (e) {
		const char *tn =
		    json_string_value(json_object_get(rec, "tenant"));
		e->state = (int8_t)state_index(
		    json_string_value(json_object_get(rec, "state")));
		if (tn)
			e->tenant = tenant_index(b->jobs, tn);
		gpu_note(b, rec, id, e->tenant);
		memset(e->stages, 0, sizeof(e->stages));
		json_array_foreach (stages, i, s) {
			int k = state_index(
			    json_string_value(json_object_get(s, "state")));
			if (k >= 0)
				e->stages[k]++;
		}
	}
	pthread_mutex_unlock(&b->pmu);
}

void mer_placer_render(struct mer_broker *b, FILE *out)
{
	uint64_t jobs[NSTATES] = {0}, stages[NSTATES] = {0};
	char lb[64];

	pthread_mutex_lock(&b->pmu);
	for (size_t i = 0; b->jobs && i < b->jobs->cap; i++) {
		struct jt_entry *e = &b->jobs->e[i];
		if (!e->id[0])
			continue;
		if (e->state >= 0)
			jobs[e->state]++;
		for (size_t k = 0; k < NSTATES; k++)
			stages[k] += e->stages[k];
	}
	pthread_mutex_unlock(&b->pmu);
	mer_metrics_header(out, "meridian_jobs", "gauge", "Jobs by state.");
	for (size_t k = 0; k < NSTATES; k++) {
		snprintf(lb, sizeof(lb), "state=\"%s\"", states[k]);
		mer_metrics_sample(out, "meridian_jobs", lb, (double)jobs[k]);
	}
	mer_metrics_header(out, "meridian_stages", "gauge", "Stages by state.");
	for (size_t k = 0; k < NSTATES; k++) {
		snprintf(lb, sizeof(lb), "state=\"%s\"", states[k]);
		mer_metrics_sample(out, "meridian_stages", lb,
				   (double)stages[k]);
	}
}

void mer_placer_enqueue(struct mer_broker *b, const char *id)
{
	pthread_mutex_lock(&b->pmu);
	if (b->nqueue == b->capqueue) {
		size_t nc = b->capqueue ? 2 * b->capqueue : 256;
		void *q = realloc(b->queue, nc * sizeof(*b->queue));
		if (!q) {
			/* The periodic retry finds it later. */
			b->kick = 1;
			pthread_mutex_unlock(&b->pmu);
			return;
		}
		b->queue = q;
		b->capqueue = nc;
	}
	snprintf(b->queue[b->nqueue++], MER_JOB_ID_SIZE, "%s", id);
	if (!b->jobs)
		b->jobs = calloc(1, sizeof(*b->jobs));
	struct jt_entry *e = b->jobs ? jt_find(b->jobs, id, 1) : NULL;
	if (e && e->state < 0)
		e->state = 0; /* pending until the record says otherwise */
	pthread_cond_signal(&b->pcv);
	pthread_mutex_unlock(&b->pmu);
}

void mer_placer_kick(struct mer_broker *b)
{
	pthread_mutex_lock(&b->pmu);
	b->kick = 1;
	pthread_cond_signal(&b->pcv);
	pthread_mutex_unlock(&b->pmu);
}

/* ---- one placement ----------------------------------------------------- */

struct place_ctx {
	const struct mer_placement *pl;
	json_t *expl;
	long long now;
	double pending_timeout_s;
	int changed;
};

static int is_state(const json_t *o, const char *st)
{
	const char *v = json_string_value(json_object_get(o, "state"));
	return v && strcmp(v, st) == 0;
}

static int terminal_state(const json_t *o)
{
	return is_state(o, MER_ST_SUCCEEDED) || is_state(o, MER_ST_FAILED) ||
	       is_state(o, MER_ST_CANCELLED);
}

/* Does the job wait for the placer: not ended, not being cancelled, and
 * a stage pending (first placement, or returned by a retry or a lost
 * site)? */
static int wants_placement(const json_t *rec)
{
	const json_t *s;
	size_t i;

	if (terminal_state(rec) ||
	    json_is_true(json_object_get(rec, "cancel_requested")))
		return 0;
	json_array_foreach (json_object_get(rec, "stages"), i, s)
		if (is_state(s, MER_ST_PENDING))
			return 1;
	return 0;
}

static int mutate_placed(void *arg, json_t *rec)
{
	struct place_ctx *c = arg;
	const struct mer_placement *pl = c->pl;
	json_t *stages = json_object_get(rec, "stages");

	/* Only stages still pending may be placed: a cancel (or another
	 * broker) that got there first wins. */
	if (!wants_placement(rec))
		return MER_ECANCELED;
	if (json_array_size(stages) != pl->nstages)
		return MER_EPROTO;
	if (pl->complete) {
		for (size_t i = 0; i < pl->nstages; i++) {
			json_t *s = json_array_get(stages, i);
			const struct mer_stage_result *r = &pl->stages[i];
			if (r->site < 0 || r->status != MER_STAGE_PLACED ||
			    !is_state(s, MER_ST_PENDING))
				continue;
			json_object_set_new(
			    s, "site",
			    json_string(pl->fed->sites[r->site].name));
			json_object_set_new(s, "state",
					    json_string(MER_ST_PLACED));
			json_object_set_new(s, "placed_at",
					    json_integer(c->now));
			json_object_del(s, "reason");
			json_object_del(s, "pending_since");
		}
	} else {
		int changed = 0, timeout = 0;
		long long created =
		    json_integer_value(json_object_get(rec, "created_at"));
		for (size_t i = 0; i < pl->nstages; i++) {
			json_t *s = json_array_get(stages, i);
			if (!is_state(s, MER_ST_PENDING))
				continue;
			const char *old =
			    json_string_value(json_object_get(s, "reason"));
			const char *note = pl->stages[i].note;
			json_t *since = json_object_get(s, "pending_since");
			long long from =
			    since ? json_integer_value(since) : created;
			if (pl->stages[i].status != MER_STAGE_PENDING)
				note = "";
			if (!old || strcmp(old, note) != 0) {
				json_object_set_new(s, "reason",
						    json_string(note));
				changed = 1;
			}
			/* Pending since submission, or since it was sent
			 * back (retry, lost site). */
			if (c->pending_timeout_s > 0 &&
			    (double)(c->now - from) > c->pending_timeout_s) {
				json_object_set_new(s, "state",
						    json_string(MER_ST_FAILED));
				json_object_set_new(s, "finished_at",
						    json_integer(c->now));
				timeout = 1;
			}
		}
		if (timeout) {
			json_object_set_new(
			    rec, "error",
			    json_string("pending timeout: no site could "
					"take the job"));
			changed = 1;
		}
		/* Unchanged reasons: no write (pending jobs are retried on
		 * every round, and etcd need not hear about each). */
		if (!changed)
			return MER_ECANCELED;
	}
	mer_dispatch_job_state(rec, c->now);
	json_object_set(rec, "placement", c->expl);
	json_object_set_new(rec, "updated_at", json_integer(c->now));
	c->changed = 1;
	return 0;
}

static double mono_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Stages each tenant holds (placed, dispatched, running), for the
 * policy's concurrent-stage quota (GPU quotas: gpu_snapshot). */
static long long *tenant_usage(struct mer_broker *b, size_t *n)
{
	long long *u = NULL;

	pthread_mutex_lock(&b->pmu);
	*n = b->jobs ? b->jobs->ntenants : 0;
	u = calloc(*n + 1, sizeof(*u));
	for (size_t i = 0; u && b->jobs && i < b->jobs->cap; i++) {
		struct jt_entry *e = &b->jobs->e[i];
		if (!e->id[0] || e->tenant >= *n)
			continue;
		u[e->tenant] += e->stages[1] + e->stages[2] + e->stages[3];
	}
	pthread_mutex_unlock(&b->pmu);
	return u;
}

static long long usage_of(struct mer_broker *b, const long long *u, size_t n,
			  const char *tenant)
{
	long long v = 0;

	pthread_mutex_lock(&b->pmu);
	for (size_t i = 0; u && b->jobs && i < n; i++)
		if (strcmp(b->jobs->tenants[i], tenant) == 0)
			v = u[i];
	pthread_mutex_unlock(&b->pmu);
	return v;
}

static int fed_has(const struct mer_fed *fed, const char *site)
{
	for (size_t i = 0; i < fed->nsites; i++)
		if (strcmp(fed->sites[i].name, site) == 0)
			return 1;
	return 0;
}

/* ---- learned history ------------------------------------------------------
 * A copy of "<p>/history/" in memory (loaded at start, kept by
 * mer_placer_history_note), so that placing a job costs no etcd read. */

struct hist_entry {
	char tenant[MER_TENANT_NAME_MAX];
	char job[128], stage[128], site[MER_LINK_NAME_MAX];
	double runtime_s, wait_s, samples;
};

struct hist_cache {
	struct hist_entry *e;
	size_t n, cap;
};

/* pmu held. */
static void hist_put(struct mer_broker *b, const char *tenant, const char *job,
		     const char *stage, const char *site, const json_t *o)
{
	struct hist_cache *h = b->hist;
	struct hist_entry *e = NULL;

	if (!h && !(h = b->hist = calloc(1, sizeof(*b->hist))))
		return;
	for (size_t i = 0; i < h->n && !e; i++)
		if (strcmp(h->e[i].tenant, tenant) == 0 &&
		    strcmp(h->e[i].job, job) == 0 &&
		    strcmp(h->e[i].stage, stage) == 0 &&
		    strcmp(h->e[i].site, site) == 0)
			e = &h->e[i];
	if (!e) {
		if (h->n == h->cap) {
			size_t nc = h->cap ? 2 * h->cap : 64;
			void *p = realloc(h->e, nc * sizeof(*h->e));
			if (!p)
				return;
			h->e = p;
			h->cap = nc;
		}
		e = &h->e[h->n++];
		memset(e, 0, sizeof(*e));
		snprintf(e->tenant, sizeof(e->tenant), "%s", tenant);
		snprintf(e->job, sizeof(e->job), "%s", job);
		snprintf(e->stage, sizeof(e->stage), "%s", stage);
		snprintf(e->site, sizeof(e->site), "%s", site);
	}
	json_t *w = json_object_get(o, "wait_s");
	e->runtime_s = json_number_value(json_object_get(o, "runtime_s"));
	e->wait_s = w ? json_number_value(w) : -1;
	e->samples = json_number_value(json_object_get(o, "samples"));
}

void mer_placer_history_note(struct mer_broker *b, const char *tenant,
			     const char *job, const char *stage,
			     const char *site, const json_t *o)
{
	pthread_mutex_lock(&b->pmu);
	hist_put(b, tenant, job, stage, site, o);
	pthread_mutex_unlock(&b->pmu);
}

/* One "<p>/history/<tenant>/<job>/<stage>/<site>" record. */
static void history_load_one(void *arg, const char *rest, const json_t *o)
{
	struct load_ctx *c = arg;
	char *parts[4], *save = NULL, key[600];
	int k = 0;

	snprintf(key, sizeof(key), "%s", rest);
	for (char *t = strtok_r(key, "/", &save); t && k < 4;
	     t = strtok_r(NULL, "/", &save))
		parts[k++] = t;
	if (k != 4 || !json_is_object(o))
		return;
	pthread_mutex_lock(&c->b->pmu);
	hist_put(c->b, parts[0], parts[1], parts[2], parts[3], o);
	pthread_mutex_unlock(&c->b->pmu);
	c->total++;
}

static void history_load_all(struct mer_broker *b)
{
	struct load_ctx c = {.b = b};

	mer_store_scan_prefix(b->store, "history/", history_load_one, &c);
	if (c.total)
		mer_info("history loaded", "entries=%zu", c.total);
}

/* The engine's history entries for one job name; they point into h. */
struct hist_buf {
	struct mer_history_entry *e;
	char (*keys)[2][200];
	size_t n;
};

static void history_for(struct mer_broker *b, const char *tenant,
			const char *name, struct hist_buf *out)
{
	memset(out, 0, sizeof(*out));
	pthread_mutex_lock(&b->pmu);
	struct hist_cache *h = b->hist;
	size_t n = 0;
	for (size_t i = 0; h && i < h->n; i++)
		n += strcmp(h->e[i].tenant, tenant) == 0 &&
		     strcmp(h->e[i].job, name) == 0;
	if (n) {
		out->e = calloc(n, sizeof(*out->e));
		out->keys = calloc(n, sizeof(*out->keys));
	}
	for (size_t i = 0; out->e && out->keys && i < h->n; i++) {
		const struct hist_entry *x = &h->e[i];
		if (strcmp(x->tenant, tenant) != 0 || strcmp(x->job, name) != 0)
			continue;
		struct mer_history_entry *e = &out->e[out->n];
		snprintf(out->keys[out->n][0], 200, "job:%s/%s", name,
			 x->stage);
		snprintf(out->keys[out->n][1], 200, "%s", x->site);
		e->key = out->keys[out->n][0];
		e->site = out->keys[out->n][1];
		e->runtime_s = x->runtime_s;
		e->wait_s = x->wait_s;
		e->samples = x->samples;
		out->n++;
	}
	pthread_mutex_unlock(&b->pmu);
}

static void place_one(struct mer_broker *b, struct mer_engine *eng,
		      const struct mer_fed *fed,
		      const struct mer_policy_ref *pr, const long long *usage,
		      size_t nusage, const struct gpu_use *gsnap, size_t ngsnap,
		      const char *id)
{
	struct mer_usage_gpu *gpus = NULL;
	json_t *rec = NULL, *after = NULL;
	struct mer_stage_fix *fixed = NULL;
	struct hist_buf hist = {0};
	struct mer_job *job = NULL;
	struct mer_placement *pl = NULL;
	char err[512];
	double t0 = mono_s();
	int rv;

	if ((rv = mer_store_get_cached(b->store, id, &rec, NULL)) != 0) {
		mer_warn("job not readable", "job=%s err=%s", id,
			 mer_errname(rv));
		return;
	}
	if (!wants_placement(rec)) {
		mer_placer_note(b, rec);
		goto out;
	}
	rv = mer_job_from_json(json_object_get(rec, "spec"), NULL, &job, err,
			       sizeof(err));
	if (rv) {
		mer_warn("stored job does not parse", "job=%s why=%s", id, err);
		goto out;
	}
	size_t ngpus = 0;
	gpus = gpu_usage_of(b, gsnap, ngsnap, job->tenant, &ngpus);
	struct mer_usage use = {.concurrent_stages =
				    usage_of(b, usage, nusage, job->tenant),
				.gpus = gpus,
				.ngpus = ngpus};
	/* Stages that have a site keep it: only the pending ones are
	 * placed (again), next to where the others run or ran. */
	json_t *st_arr = json_object_get(rec, "stages"), *sv;
	size_t i, nfixed = 0;
	fixed = calloc(json_array_size(st_arr) + 1, sizeof(*fixed));
	if (!fixed)
		goto out;
	json_array_foreach (st_arr, i, sv) {
		const char *site =
		    json_string_value(json_object_get(sv, "site"));
		if (is_state(sv, MER_ST_PENDING) || !site ||
		    !fed_has(fed, site))
			continue;
		fixed[nfixed++] = (struct mer_stage_fix){
		    .stage = json_string_value(json_object_get(sv, "name")),
		    .site = site,
		    .finished = is_state(sv, MER_ST_SUCCEEDED)};
	}
	history_for(b, job->tenant ? job->tenant : "", job->name, &hist);
	struct mer_place_input in = {.job = job,
				     .usage = &use,
				     .history = hist.e,
				     .nhistory = hist.n,
				     .fixed = fixed,
				     .nfixed = nfixed,
				     .now = (long long)time(NULL)};
	if ((rv = mer_engine_place(eng, &in, 1, &pl))) {
		mer_warn("placement failed", "job=%s err=%s", id,
			 mer_errname(rv));
		goto out;
	}
	struct place_ctx c = {.pl = pl,
			      .expl = mer_placement_to_json(pl, 5),
			      .now = in.now,
			      .pending_timeout_s = pr->pol->pending_timeout_s};
	if (c.expl) {
		json_object_set_new(c.expl, "policy_version",
				    json_integer(pr->version));
		json_object_set_new(c.expl, "placed_at", json_integer(in.now));
	}
	rv = mer_store_update(b->store, id, mutate_placed, &c, &after);
	json_decref(c.expl);
	if (rv == 0 && after) {
		mer_placer_note(b, after);
		if (c.changed &&
		    is_state(after, MER_ST_FAILED)) /* pending timeout */
			mer_dispatch_resend(b, after);
		if (c.changed && pl->complete) {
			for (size_t i = 0; i < pl->nstages; i++) {
				const struct mer_stage_result *r =
				    &pl->stages[i];
				const struct mer_stage *js = &job->stages[i];
				char by[200];
				if (r->status != MER_STAGE_PLACED ||
				    !r->preempts || r->site < 0)
					continue;
				snprintf(by, sizeof(by), "%s/%s", id, js->name);
				preempt_for(
				    b, pr->pol, job->priority,
				    fed->sites[r->site].name,
				    js->cpu * (js->replicas ? js->replicas : 1),
				    js->gpu_count *
					(js->replicas ? js->replicas : 1),
				    by);
			}
			mer_metrics_inc(b->metrics, MER_C_PLACEMENTS, 1);
			mer_info("job placed", "job=%s method=%s", id,
				 pl->method);
			mer_dispatch_job(b, id);
		} else if (c.changed) {
			mer_metrics_inc(b->metrics, MER_C_PLACEMENTS_PENDING,
					1);
		}
	}
	mer_metrics_observe(b->metrics, MER_H_PLACEMENT, mono_s() - t0);
out:
	json_decref(after);
	free(fixed);
	free(gpus);
	mer_placement_free(pl);
	free(hist.e);
	free(hist.keys);
	mer_job_free(job);
	json_decref(rec);
}

/* ---- federation snapshot ---------------------------------------------------
 * What each round places against, built by the placer thread from memory
 * where it can be (docs/STATE.md "Placement"): the agents' summaries as the
 * broker received them (dispatch.h), and a cache of the site records
 * ("<p>/site-status/": drained, revoked, lost; "<p>/sites/": membership)
 * and of etcd's copy of the summaries ("<p>/site-reports/"), which serves
 * the sites that have not reported since this broker started. The records
 * are read again when something in this broker changed them (every writer
 * calls mer_broker_fed_invalidate after its write) and every
 * SITES_MAX_AGE_MS; etcd's copy then too when it holds summaries of sites
 * this broker does not know, and every COPY_MAX_AGE_MS. So a round costs
 * no etcd read unless sites changed. A summary found valid is not
 * validated again while it stays the same. Without a link, summaries only
 * come through etcd: everything is read every round, as before. One
 * cache per broker (b->snap), shared by the placer's rounds and the
 * rebuilds of submissions and dry-runs (mer_placer_snapshot), one build
 * at a time. */

/* Re-read the site records at least this often, for writers outside this
 * process (another broker on the same etcd, an operator's etcdctl). */
#define SITES_MAX_AGE_MS 10000
/* Re-read etcd's copy of the summaries at least this often. */
#define COPY_MAX_AGE_MS 60000

struct snap_cache {
	json_t *status;	    /* "<p>/site-status/" by name */
	json_t *members;    /* "<p>/sites/" by name */
	uint64_t sites_gen; /* b->fed_gen they were read at */
	long long sites_ms; /* monotonic */
	json_t *copy;	    /* etcd's summaries by name; null: invalid */
	long long copy_ms;
	json_t *valid;	 /* site -> its summary last found valid */
	json_t *invalid; /* site -> its summary last found invalid */
	size_t same, equal, validated; /* this build's, for the debug line */
};

static void snap_cache_clear(struct snap_cache *c)
{
	json_decref(c->status);
	json_decref(c->members);
	json_decref(c->copy);
	json_decref(c->valid);
	json_decref(c->invalid);
	memset(c, 0, sizeof(*c));
}

static long long mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static double thread_cpu_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* Every key under "<p>/<what>/" as name -> parsed value (unparsable
 * values as null), or NULL when etcd cannot be read. */
static json_t *range_obj(struct mer_broker *b, const char *what)
{
	char prefix[320];
	size_t plen =
	    mer_store_key(b->store, prefix, sizeof(prefix), "%s/", what);
	struct mer_etcd_range r = {0};
	json_t *out = json_object();

	if (!out || !plen ||
	    mer_etcd_range_prefix(b->etcd, prefix, plen, NULL, 0, 0, 0, 0, &r,
				  NULL) != 0) {
		json_decref(out);
		return NULL;
	}
	for (size_t i = 0; i < r.n; i++) {
		json_t *v =
		    json_loadb(r.kvs[i].value, r.kvs[i].value_len, 0, NULL);
		json_object_set_new(out, r.kvs[i].key + plen,
				    v ? v : json_null());
	}
	mer_etcd_range_clear(&r);
	return out;
}

/* How many summaries etcd holds (a count, no values), or -1. */
static int64_t copy_keys(struct mer_broker *b)
{
	char prefix[320];
	size_t plen =
	    mer_store_key(b->store, prefix, sizeof(prefix), "site-reports/");
	struct mer_etcd_range r = {0};
	int64_t n = -1;

	if (plen && mer_etcd_range_prefix(b->etcd, prefix, plen, NULL, 0, 1, 0,
					  1, &r, NULL) == 0)
		n = r.count;
	mer_etcd_range_clear(&r);
	return n;
}

/* Reads etcd's copy of the summaries, each validated once here. */
static int copy_load(struct mer_broker *b, struct snap_cache *c, long long now)
{
	json_t *copy = range_obj(b, "site-reports");
	const char *name;
	json_t *v;
	void *tmp;
	char err[256];

	if (!copy)
		return MER_EUNREACHABLE;
	json_object_foreach_safe (copy, tmp, name, v) {
		if (json_is_null(v))
			continue;
		/* A summary that fails validation is skipped, not fatal:
		 * one broken agent must not stop placement everywhere. */
		if (mer_site_validate(v, NULL, err, sizeof(err)) != 0) {
			mer_warn("site report ignored", "site=%s why=%s", name,
				 err);
			json_object_set_new(copy, name, json_null());
		}
	}
	json_decref(c->copy);
	c->copy = copy;
	c->copy_ms = now;
	return 0;
}

/* Whether snap (site's summary from memory; s: its copy with
 * last_heartbeat) may be placed on; validated when it is new. */
static int mem_valid(struct snap_cache *c, const char *site, json_t *snap,
		     const json_t *s)
{
	json_t *v = json_object_get(c->valid, site);
	char err[256];

	if (v == snap) {
		c->same++;
		return 1;
	}
	if (v && json_equal(v, snap)) {
		c->equal++;
		json_object_set(c->valid, site, snap);
		return 1;
	}
	v = json_object_get(c->invalid, site);
	if (v && (v == snap || json_equal(v, snap)))
		return 0; /* warned about when it came */
	c->validated++;
	if (mer_site_validate(s, NULL, err, sizeof(err)) == 0) {
		json_object_set(c->valid, site, snap);
		json_object_del(c->invalid, site);
		return 1;
	}
	mer_warn("site report ignored", "site=%s why=%s", site, err);
	json_object_set(c->invalid, site, snap);
	json_object_del(c->valid, site);
	return 0;
}

/* Sites the broker's own stages annotate (outputs, preemptible stages), as
 * a set of names; pmu taken. */
static json_t *annotated_sites(struct mer_broker *b)
{
	json_t *set = json_object();

	pthread_mutex_lock(&b->pmu);
	for (size_t i = 0; set && b->reps && i < b->reps->n; i++)
		json_object_set_new(set, b->reps->e[i].site, json_true());
	for (size_t i = 0; set && b->pre && i < b->pre->n; i++)
		json_object_set_new(set, b->pre->e[i].site, json_true());
	pthread_mutex_unlock(&b->pmu);
	return set;
}

/*
 * The federation as the engine sees it: static sites, then etcd's
 * summaries, then the ones in memory; minus revoked sites, with drained
 * marks, lost sites as health down, the broker's own stages annotated;
 * from the cache c. gen: b->fed_gen when the build started; linked: the
 * link runs (summaries arrive in memory), else etcd is read every time.
 */
static int snap_build(struct mer_broker *b, struct snap_cache *c, uint64_t gen,
		      int linked, struct mer_fed **fed, char *err,
		      size_t errlen)
{
	long long now = mono_ms();
	/* phase ends, wall and thread CPU ms, for the debug line */
	double w0 = mono_s() * 1e3, c0 = thread_cpu_ms(), w1, c1, w2, c2;
	struct mer_report_ref *refs = NULL;
	size_t nrefs = 0;
	json_t *doc = NULL, *sites = json_object();
	json_t *arr = json_array(), *mem = json_object(), *annot = NULL, *v;
	const char *name;
	int read_sites = 0, read_copy = 0;
	int rv = MER_EUNREACHABLE;

	*fed = NULL;
	c->same = c->equal = c->validated = 0;
	if (!c->valid)
		c->valid = json_object();
	if (!c->invalid)
		c->invalid = json_object();
	if (!sites || !arr || !mem || !c->valid || !c->invalid) {
		rv = MER_ENOMEM;
		goto out;
	}
	if ((rv = mer_dispatch_report_refs(b, &refs, &nrefs)))
		goto out;
	/* Without a link etcd is where summaries come from: read it all
	 * every round. */
	if (!linked || !c->status || c->sites_gen != gen ||
	    now - c->sites_ms > SITES_MAX_AGE_MS) {
		json_t *st = range_obj(b, "site-status");
		json_t *m = st ? range_obj(b, "sites") : NULL;
		if (!m) {
			json_decref(st);
			goto out_etcd;
		}
		json_decref(c->status);
		json_decref(c->members);
		c->status = st;
		c->members = m;
		c->sites_gen = gen;
		c->sites_ms = now;
		read_sites = 1;
		/* etcd's copy of the summaries: when old, and when it holds
		 * summaries of sites neither it nor memory has (written by
		 * another process: read them too). */
		read_copy =
		    !linked || !c->copy || now - c->copy_ms > COPY_MAX_AGE_MS;
		if (!read_copy) {
			int64_t keys = copy_keys(b);
			size_t known = json_object_size(c->copy);
			if (keys < 0)
				goto out_etcd;
			for (size_t k = 0; k < nrefs; k++)
				if (!json_object_get(c->copy, refs[k].site))
					known++;
			read_copy = keys > (int64_t)known;
		}
	}
	if (read_copy && (rv = copy_load(b, c, now)))
		goto out_etcd;
	w1 = mono_s() * 1e3;
	c1 = thread_cpu_ms();
	/* Memory's summaries (null: invalid) win over etcd's, which win over
	 * the static sites. Each entry of sites is a shallow copy of its
	 * own, so top-level keys may be set. */
	for (size_t k = 0; k < nrefs; k++) {
		json_t *s = json_copy(refs[k].snap);
		if (!s) {
			rv = MER_ENOMEM;
			goto out;
		}
		json_object_set_new(s, "last_heartbeat",
				    json_integer(refs[k].at));
		if (!mem_valid(c, refs[k].site, refs[k].snap, s)) {
			json_decref(s);
			s = json_null();
		}
		json_object_set_new(mem, refs[k].site, s);
	}
	pthread_rwlock_rdlock(&b->lock);
	doc = b->fed_file ? json_copy(b->fed_file) : json_object();
	pthread_rwlock_unlock(&b->lock);
	if (!doc) {
		rv = MER_ENOMEM;
		goto out;
	}
	size_t i;
	json_array_foreach (json_object_get(doc, "sites"), i, v)
		json_object_set_new(
		    sites, json_string_value(json_object_get(v, "name")),
		    json_copy(v));
	json_object_foreach (c->copy, name, v)
		if (!json_is_null(v) && !json_object_get(mem, name))
			json_object_set_new(sites, name, json_copy(v));
	json_object_foreach (mem, name, v)
		if (!json_is_null(v))
			json_object_set(sites, name, v);
	annot = annotated_sites(b);
	json_object_foreach (sites, name, v) {
		json_t *st = json_object_get(c->status, name);
		json_t *m = json_object_get(c->members, name);
		json_t *s = v;

		if (json_is_true(json_object_get(st, "revoked")) ||
		    json_is_true(json_object_get(m, "revoked")))
			continue;
		/* What the broker's stages add is nested: copy it all. */
		if (json_object_get(annot, name)) {
			s = json_deep_copy(v);
			if (!s)
				continue;
			mer_placer_annotate_site(b, name, s);
		} else {
			json_incref(s);
		}
		if (json_is_true(json_object_get(st, "drained")))
			json_object_set_new(s, "drained", json_true());
		json_object_del(s, "lost");
		if (json_is_true(json_object_get(st, "lost")))
			json_object_set_new(s, "health", json_string("down"));
		json_array_append_new(arr, s);
	}
	json_object_set(doc, "sites", arr);
	w2 = mono_s() * 1e3;
	c2 = thread_cpu_ms();
	err[0] = 0;
	rv = mer_fed_from_json(doc, NULL, fed, err, errlen);
	double w3 = mono_s() * 1e3, c3 = thread_cpu_ms();
	mer_debug("federation snapshot built",
		  "sites=%zu reported=%zu read_sites=%d read_reports=%d "
		  "ms=%.1f cpu_ms=%.1f etcd_ms=%.1f/%.1f sites_ms=%.1f/%.1f "
		  "parse_ms=%.1f/%.1f same=%zu equal=%zu validated=%zu",
		  json_array_size(arr), nrefs, read_sites, read_copy, w3 - w0,
		  c3 - c0, w1 - w0, c1 - c0, w2 - w1, c2 - c1, w3 - w2, c3 - c2,
		  c->same, c->equal, c->validated);
	goto out;
out_etcd:
	rv = MER_EUNREACHABLE;
	snprintf(err, errlen, "etcd unreachable");
out:
	mer_dispatch_report_refs_free(refs, nrefs);
	json_decref(annot);
	json_decref(mem);
	json_decref(doc);
	json_decref(sites);
	json_decref(arr);
	return rv;
}

/* snap_build on the broker's one cache (b->snap, under b->smu), shared by
 * the placer's rounds and the API's rebuilds (mer_broker_fed_get). */
static int snap_shared(struct mer_broker *b, uint64_t gen, int linked,
		       struct mer_fed **fed, char *err, size_t errlen)
{
	int rv = MER_ENOMEM;

	pthread_mutex_lock(&b->smu);
	if (!b->snap)
		b->snap = calloc(1, sizeof(*b->snap));
	if (b->snap)
		rv = snap_build(b, b->snap, gen, linked, fed, err, errlen);
	else
		snprintf(err, errlen, "out of memory");
	pthread_mutex_unlock(&b->smu);
	return rv;
}

int mer_placer_snapshot(struct mer_broker *b, uint64_t gen,
			struct mer_fed **fed, char *err, size_t errlen)
{
	/* Summaries arrive in memory only while this broker leads (its link
	 * runs then); a follower's come from etcd, read on every build. */
	int linked = b->cfg.link_listen && b->cfg.link_listen[0] &&
		     mer_leader_epoch(b) > 0;

	return snap_shared(b, gen, linked, fed, err, errlen);
}

void mer_placer_snapshot_drop(struct mer_broker *b)
{
	pthread_mutex_lock(&b->smu);
	if (b->snap) {
		snap_cache_clear(b->snap);
		free(b->snap);
		b->snap = NULL;
	}
	pthread_mutex_unlock(&b->smu);
}

/* The round's builder: the placer runs only while the link does, so its
 * summaries are in memory (no leader-epoch check, unlike
 * mer_placer_snapshot). */
static int snap_round_build(struct mer_broker *b, uint64_t gen,
			    struct mer_fed **fed, char *err, size_t errlen)
{
	return snap_shared(b, gen, b->cfg.link_listen && b->cfg.link_listen[0],
			   fed, err, errlen);
}

/* A fresh snapshot for a round, published as the broker's cached one (as
 * mer_broker_fed_get does) so that submissions and dry-runs within their
 * age limit use it too. */
static int snap_get(struct mer_broker *b, struct mer_fed_ref **out, char *err,
		    size_t errlen)
{
	pthread_mutex_lock(&b->fmu);
	uint64_t gen = b->fed_gen;
	pthread_mutex_unlock(&b->fmu);
	return mer_broker_fed_build(b, gen, mono_ms(), 0, snap_round_build, out,
				    err, errlen);
}

static void place_round(struct mer_broker *b, char (*ids)[MER_JOB_ID_SIZE],
			size_t n)
{
	struct mer_policy_ref *pr = mer_broker_policy_get(b);
	struct mer_fed_ref *fr = NULL;
	struct mer_engine *eng = NULL;
	char err[512];
	int rv;

	/* A fresh snapshot each round: reports and marks change. */
	rv = snap_get(b, &fr, err, sizeof(err));
	if (rv) {
		mer_warn("no federation snapshot", "err=%s why=%s",
			 mer_errname(rv), err);
		goto out;
	}
	if ((rv = mer_engine_new(fr->fed, pr->pol, &eng)))
		goto out;
	/* Usage as of the round's start; the engine reserves what the
	 * round's own placements take. */
	size_t nusage = 0;
	long long *usage = tenant_usage(b, &nusage);
	size_t ngsnap = 0;
	struct gpu_use *gsnap = gpu_snapshot(b, &ngsnap);
	for (size_t i = 0; i < n; i++) {
		if (i % 64 == 63) {
			/* a long round must not hold up shutdown */
			pthread_mutex_lock(&b->pmu);
			int stop = b->pstop;
			pthread_mutex_unlock(&b->pmu);
			if (stop)
				break;
		}
		place_one(b, eng, fr->fed, pr, usage, nusage, gsnap, ngsnap,
			  ids[i]);
	}
	free(usage);
	free(gsnap);
out:
	mer_engine_free(eng);
	mer_broker_fed_put(fr);
	mer_broker_policy_put(b, pr);
}

struct recover {
	struct mer_broker *b;
	size_t jobs, pending;
};

static void recover_one(void *arg, const json_t *rec)
{
	struct recover *r = arg;
	const char *st = json_string_value(json_object_get(rec, "state"));

	r->jobs++;
	mer_placer_note(r->b, rec);
	/* In flight when the broker stopped: send again (idempotent), and
	 * launch what became ready. */
	mer_dispatch_resend(r->b, rec);
	if (st && r->b->link &&
	    (strcmp(st, MER_ST_PLACED) == 0 ||
	     strcmp(st, MER_ST_RUNNING) == 0 ||
	     strcmp(st, MER_ST_PENDING) == 0))
		mer_dispatch_job(r->b,
				 json_string_value(json_object_get(rec, "id")));
	json_t *s;
	size_t i;
	json_array_foreach (json_object_get(rec, "stages"), i, s)
		if (!terminal_state(s) && !is_state(s, MER_ST_PENDING))
			mer_dispatch_watch(
			    r->b,
			    json_string_value(json_object_get(s, "site")));
	if (wants_placement(rec)) {
		r->pending++;
		mer_placer_enqueue(
		    r->b, json_string_value(json_object_get(rec, "id")));
	}
}

static void *placer_main(void *arg)
{
	struct mer_broker *b = arg;
	char(*ids)[MER_JOB_ID_SIZE] = NULL;
	size_t nids = 0, capids = 0;

	history_load_all(b);
	replicas_load_all(b);
	/* Resume: every job etcd has is counted; pending ones placed. */
	struct recover rc = {.b = b};
	int rv = mer_store_scan(b->store, recover_one, &rc);
	if (rv)
		mer_warn("job scan failed", "err=%s", mer_errname(rv));
	else
		mer_info("jobs resumed from etcd", "jobs=%zu pending=%zu",
			 rc.jobs, rc.pending);
	pthread_mutex_lock(&b->pmu);
	while (!b->pstop) {
		int retry_all = 0;
		if (!b->nqueue && !b->kick) {
			struct timespec ts;
			clock_gettime(CLOCK_REALTIME, &ts);
			long long ns = (long long)ts.tv_nsec +
				       b->cfg.placement_interval_ms * 1000000LL;
			ts.tv_sec += (time_t)(ns / 1000000000LL);
			ts.tv_nsec = (long)(ns % 1000000000LL);
			if (pthread_cond_timedwait(&b->pcv, &b->pmu, &ts) != 0)
				retry_all = 1;
			if (b->pstop)
				break;
		}
		retry_all |= b->kick;
		b->kick = 0;
		pthread_mutex_unlock(&b->pmu);
		mer_dispatch_check_sites(b);
		pthread_mutex_lock(&b->pmu);
		if (b->pstop)
			break;
		nids = 0;
		/* Take the queue, and with a retry every pending job. */
		size_t want = b->nqueue;
		if (retry_all && b->jobs)
			want += RETRY_BATCH;
		if (want > capids) {
			void *p = realloc(ids, want * sizeof(*ids));
			if (!p) {
				b->kick = 1;
				continue;
			}
			ids = p;
			capids = want;
		}
		for (size_t i = 0; i < b->nqueue; i++)
			memcpy(ids[nids++], b->queue[i], MER_JOB_ID_SIZE);
		b->nqueue = 0;
		if (retry_all && b->jobs && b->jobs->cap) {
			struct job_table *t = b->jobs;
			size_t i = 0, k = t->retry_from % t->cap, taken = 0;
			for (; i < t->cap && taken < RETRY_BATCH; i++) {
				struct jt_entry *e = &t->e[(k + i) % t->cap];
				/* pending, or running with a stage sent back
				 * to pending */
				if (e->id[0] &&
				    (e->state == 0 ||
				     (e->state >= 1 && e->state <= 3 &&
				      e->stages[0] > 0))) {
					memcpy(ids[nids++], e->id,
					       MER_JOB_ID_SIZE);
					taken++;
				}
			}
			t->retry_from = (k + i) % t->cap;
		}
		pthread_mutex_unlock(&b->pmu);
		mer_debug("placement round", "jobs=%zu retry=%d", nids,
			  retry_all);
		if (nids)
			place_round(b, ids, nids);
		pthread_mutex_lock(&b->pmu);
	}
	pthread_mutex_unlock(&b->pmu);
	free(ids);
	return NULL;
}

int mer_placer_start(struct mer_broker *b)
{
	if (pthread_create(&b->pthread, NULL, placer_main, b) != 0)
		return MER_ENOMEM;
	b->prunning = 1;
	return 0;
}

void mer_placer_stop(struct mer_broker *b)
{
	if (!b->prunning)
		return;
	pthread_mutex_lock(&b->pmu);
	b->pstop = 1;
	pthread_cond_broadcast(&b->pcv);
	pthread_mutex_unlock(&b->pmu);
	pthread_join(b->pthread, NULL);
	b->prunning = 0;
	/* The next term starts from etcd (and a follower's builds read it
	 * all anyway). */
	mer_placer_snapshot_drop(b);
}

void mer_placer_free_table(struct mer_broker *b)
{
	if (b->hist) {
		free(b->hist->e);
		free(b->hist);
		b->hist = NULL;
	}
	if (b->reps) {
		for (size_t i = 0; i < b->reps->n; i++)
			json_decref(b->reps->e[i].ds);
		free(b->reps->e);
		free(b->reps);
		b->reps = NULL;
	}
	if (b->gpus) {
		free(b->gpus->e);
		free(b->gpus);
		b->gpus = NULL;
	}
	if (b->pre) {
		free(b->pre->e);
		free(b->pre);
		b->pre = NULL;
	}
	if (b->jobs) {
		free(b->jobs->e);
		free(b->jobs->tenants);
		free(b->jobs);
		b->jobs = NULL;
	}
}
