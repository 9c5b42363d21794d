/*
 * The sim adapter: a simulated site described by a JSON file (pools of
 * nodes, GPUs by model, a background load pattern). Stages "run" for their
 * declared duration divided by scheduler.time_scale. It serves demos and
 * the many-agent scale tests; it is not a stand-in for the real adapters.
 *
 * The file is read again at every probe, so a test or demo can change the
 * load, take nodes down or make the "scheduler" unreachable while the agent
 * runs. Jobs live in a process-wide table keyed by the file's path, so an
 * agent restarted inside one process (the tests) finds its jobs again, as
 * it would with a real scheduler.
 */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/err.h"
#include "common/json.h"
#include "common/log.h"
#include "site-agent/adapter.h"
#include "site-agent/config.h"

struct sim_job {
	char id[32];
	char stage[MER_AGENT_NAME_MAX];
	char pool[MER_AGENT_NAME_MAX];
	char gpu_kind[MER_AGENT_NAME_MAX + 8];
	double cpus, mem, gpus;
	long long submit_ms, start_ms, dur_ms;
	int exit_code;
	enum mer_agent_stage_state state;
};

struct sim_world {
	char path[1024];
	char site[128]; /* site.name: worlds are per site */
	struct sim_job *jobs;
	size_t njobs, cap;
	unsigned long next_id;
	struct sim_world *next;
};

static pthread_mutex_t sim_lock = PTHREAD_MUTEX_INITIALIZER;
static struct sim_world *worlds;

struct sim {
	const struct mer_agent_cfg *cfg;
	struct sim_world *w;
	struct mer_agent_capacity last; /* the file's capacity at last read */
	int have_last;
};

static long long now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int num(const struct mer_json_doc *doc, const json_t *o,
	       const char *path, const char *key, double lo, double hi,
	       double *out, char *err, size_t errlen)
{
	json_t *v = json_object_get(o, key);
	char p[256];

	if (!v)
		return 0;
	snprintf(p, sizeof(p), "%s", path);
	mer_json_path_append(p, sizeof(p), key);
	if (!json_is_number(v) || json_number_value(v) < lo ||
	    json_number_value(v) > hi) {
		mer_json_doc_errf(doc, p, err, errlen,
				  "must be a number from %g to %g", lo, hi);
		return MER_EPARSE;
	}
	*out = json_number_value(v);
	return 0;
}

/* Reads the file into cap: totals, allocatable, the background's share of
 * free, and pending demand from the file. */
static int sim_read(struct sim *s, struct mer_agent_capacity *cap,
		    int *unreachable, char *err, size_t errlen)
{
	struct mer_json_doc doc = {0};
	const json_t *pools;
	size_t i, j;
	json_t *pj, *nj;
	int rv;
	double t = (double)time(NULL);

	*unreachable = 0;
	if ((rv = mer_json_doc_load(s->cfg->sim_file, 0, 0, &doc, err, errlen)))
		return rv == MER_EIO ? MER_EUNREACHABLE : rv;
	rv = MER_EPARSE;
	if (json_is_true(json_object_get(doc.root, "unreachable"))) {
		*unreachable = 1;
		snprintf(err, errlen, "sim: the site file says unreachable");
		rv = MER_EUNREACHABLE;
		goto out_free_doc;
	}
	snprintf(cap->version, sizeof(cap->version), "%s",
		 json_string_value(json_object_get(doc.root, "version"))
		     ? json_string_value(json_object_get(doc.root, "version"))
		     : "sim");
	pools = json_object_get(doc.root, "pools");
	if (!json_is_array(pools) || json_array_size(pools) == 0) {
		mer_json_doc_errf(&doc, "pools", err, errlen,
				  "must be a non-empty array of pools");
		goto out_free_doc;
	}
	json_array_foreach (pools, i, pj) {
		char pp[64], np[96];
		const char *name =
		    json_string_value(json_object_get(pj, "name"));
		const json_t *nodes = json_object_get(pj, "nodes");
		const json_t *bg = json_object_get(pj, "background");
		const json_t *pend = json_object_get(pj, "pending");
		struct mer_agent_pool *p;
		double load = 0, amp = 0, period = 0, wait = 0;

		snprintf(pp, sizeof(pp), "pools[%zu]", i);
		if (!name || !*name) {
			mer_json_doc_errf(&doc, pp, err, errlen,
					  "a pool needs a name");
			goto out_free_doc;
		}
		if (!json_is_array(nodes)) {
			mer_json_doc_errf(&doc, pp, err, errlen,
					  "a pool needs a nodes array");
			goto out_free_doc;
		}
		if (!(p = mer_agent_cap_pool(cap, name))) {
			snprintf(err, errlen, "sim: too many pools");
			goto out_free_doc;
		}
		if (num(&doc, pj, pp, "est_wait_s", 0, 1e9, &wait, err, errlen))
			goto out_free_doc;
		p->est_wait_s = wait;
		if (bg) {
			char bp[96];
			snprintf(bp, sizeof(bp), "%s.background", pp);
			if (num(&doc, bg, bp, "load", 0, 1, &load, err,
				errlen) ||
			    num(&doc, bg, bp, "amplitude", 0, 1, &amp, err,
				errlen) ||
			    num(&doc, bg, bp, "period_s", 0, 1e9, &period, err,
				errlen))
				goto out_free_doc;
			if (period > 0)
				load += amp * sin(2 * M_PI * fmod(t, period) /
						  period);
			if (load < 0)
				load = 0;
			if (load > 1)
				load = 1;
		}
		json_array_foreach (nodes, j, nj) {
			double count = 1, down = 0, cpus = 0, mem = 0;
			const json_t *g = json_object_get(nj, "gpus");
			const char *model;
			json_t *gv;
			snprintf(np, sizeof(np), "%s.nodes[%zu]", pp, j);
			if (!json_is_object(nj)) {
				mer_json_doc_errf(&doc, np, err, errlen,
						  "must be an object");
				goto out_free_doc;
			}
			if (num(&doc, nj, np, "count", 0, 1e6, &count, err,
				errlen) ||
			    num(&doc, nj, np, "down", 0, count, &down, err,
				errlen) ||
			    num(&doc, nj, np, "cpus", 0, 1e5, &cpus, err,
				errlen) ||
			    num(&doc, nj, np, "memory_mb", 0, 1e9, &mem, err,
				errlen))
				goto out_free_doc;
			struct mer_agent_res *rc = mer_agent_pool_res(p, "cpu");
			struct mer_agent_res *rm =
			    mer_agent_pool_res(p, "memory_mb");
			if (!rc || !rm)
				goto full;
			rc->total += count * cpus;
			rc->allocatable += (count - down) * cpus;
			rm->total += count * mem;
			rm->allocatable += (count - down) * mem;
			if (g && !json_is_object(g)) {
				mer_json_doc_errf(&doc, np, err, errlen,
						  "gpus must be an object of "
						  "model: count");
				goto out_free_doc;
			}
			json_object_foreach ((json_t *)g, model, gv) {
				char kind[64];
				double n = json_number_value(gv);
				struct mer_agent_res *r;
				if (!json_is_number(gv) || n < 0) {
					mer_json_doc_errf(&doc, np, err, errlen,
							  "gpus.%s must be a "
							  "count",
							  model);
					goto out_free_doc;
				}
				snprintf(kind, sizeof(kind), "gpu:%s", model);
				if (!(r = mer_agent_pool_res(p, kind)))
					goto full;
				r->total += count * n;
				r->allocatable += (count - down) * n;
			}
		}
		for (size_t k = 0; k < p->nres; k++) {
			struct mer_agent_res *r = &p->res[k];
			r->free = r->allocatable - floor(r->allocatable * load);
			if (pend) {
				json_t *v = json_object_get(pend, r->kind);
				if (json_is_number(v))
					r->pending = json_number_value(v);
			}
		}
	}
	rv = 0;
	goto out_free_doc;
full:
	snprintf(err, errlen, "sim: too many resource kinds");
out_free_doc:
	mer_json_doc_free(&doc);
	return rv;
}

static void job_add(struct mer_agent_pool *p, const struct sim_job *j,
		    double sign, int pending)
{
	struct mer_agent_res *r;

	if ((r = mer_agent_pool_res(p, "cpu")))
		*(pending ? &r->pending : &r->free) -= sign * j->cpus;
	if ((r = mer_agent_pool_res(p, "memory_mb")))
		*(pending ? &r->pending : &r->free) -= sign * j->mem;
	if (j->gpus > 0 && (r = mer_agent_pool_res(p, j->gpu_kind)))
		*(pending ? &r->pending : &r->free) -= sign * j->gpus;
}

static int job_fits(const struct mer_agent_pool *p, const struct sim_job *j)
{
	const struct mer_agent_res *c = mer_agent_pool_find(p, "cpu");
	const struct mer_agent_res *m = mer_agent_pool_find(p, "memory_mb");
	const struct mer_agent_res *g =
	    j->gpus > 0 ? mer_agent_pool_find(p, j->gpu_kind) : NULL;

	return (c ? c->free : 0) >= j->cpus && (m ? m->free : 0) >= j->mem &&
	       (j->gpus <= 0 || (g && g->free >= j->gpus));
}

/* Advances the world to now: running jobs past their time end; pending
 * ones start, in order, when their pool has room. Called with sim_lock. */
static void tick(struct sim *s)
{
	struct sim_world *w = s->w;
	struct mer_agent_capacity *cap = &s->last;
	long long now = now_ms();

	for (size_t i = 0; i < w->njobs; i++) {
		struct sim_job *j = &w->jobs[i];
		if (j->state == MER_AGENT_STAGE_RUNNING &&
		    now - j->start_ms >= j->dur_ms)
			j->state = j->exit_code ? MER_AGENT_STAGE_FAILED
						: MER_AGENT_STAGE_SUCCEEDED;
	}
	if (!s->have_last)
		return;
	struct mer_agent_capacity *room = malloc(sizeof(*room));
	if (!room)
		return;
	*room = *cap;
	for (size_t i = 0; i < w->njobs; i++) {
		struct mer_agent_pool *p;
		if (w->jobs[i].state == MER_AGENT_STAGE_RUNNING &&
		    (p = mer_agent_cap_pool(room, w->jobs[i].pool)))
			job_add(p, &w->jobs[i], 1, 0);
	}
	for (size_t i = 0; i < w->njobs; i++) {
		struct sim_job *j = &w->jobs[i];
		struct mer_agent_pool *p;
		if (j->state != MER_AGENT_STAGE_PENDING ||
		    !(p = mer_agent_cap_pool(room, j->pool)))
			continue;
		if (job_fits(p, j)) {
			j->state = MER_AGENT_STAGE_RUNNING;
			j->start_ms = now;
			job_add(p, j, 1, 0);
		}
	}
	free(room);
}

static int sim_open(const struct mer_agent_cfg *cfg, void **inst, char *err,
		    size_t errlen)
{
	struct sim *s = calloc(1, sizeof(*s));
	struct sim_world *w;

	if (!s)
		return MER_ENOMEM;
	if (!cfg->sim_file || !*cfg->sim_file) {
		snprintf(err, errlen, "sim: scheduler.sim_file is required");
		free(s);
		return MER_EINVAL;
	}
	s->cfg = cfg;
	pthread_mutex_lock(&sim_lock);
	/* One world per site and file: agents of different sites reading
	 * one sim file are different clusters. */
	for (w = worlds; w; w = w->next) {
		if (strcmp(w->path, cfg->sim_file) == 0 &&
		    strcmp(w->site, cfg->name ? cfg->name : "") == 0)
			break;
	}
	if (!w && (w = calloc(1, sizeof(*w)))) {
		snprintf(w->path, sizeof(w->path), "%s", cfg->sim_file);
		snprintf(w->site, sizeof(w->site), "%s",
			 cfg->name ? cfg->name : "");
		w->next = worlds;
		worlds = w;
	}
	pthread_mutex_unlock(&sim_lock);
	if (!w) {
		free(s);
		return MER_ENOMEM;
	}
	s->w = w;
	*inst = s;
	return 0;
}

/* The pool named name, looking only (mer_agent_cap_pool would add it). */
static struct mer_agent_pool *pool_find(struct mer_agent_capacity *cap,
					const char *name)
{
	for (size_t i = 0; i < cap->npools; i++)
		if (strcmp(cap->pools[i].name, name) == 0)
			return &cap->pools[i];
	return NULL;
}

static int sim_probe(void *inst, struct mer_agent_capacity *cap, char *err,
		     size_t errlen)
{
	struct sim *s = inst;
	int unreachable, rv;

	memset(cap, 0, sizeof(*cap));
	if ((rv = sim_read(s, cap, &unreachable, err, errlen)))
		return rv;
	pthread_mutex_lock(&sim_lock);
	s->last = *cap;
	s->have_last = 1;
	tick(s);
	for (size_t i = 0; i < s->w->njobs; i++) {
		struct sim_job *j = &s->w->jobs[i];
		struct mer_agent_pool *p;
		if (!(p = pool_find(cap, j->pool)))
			continue; /* the pool left the sim file */
		if (j->state == MER_AGENT_STAGE_RUNNING)
			job_add(p, j, 1, 0);
		else if (j->state == MER_AGENT_STAGE_PENDING)
			job_add(p, j, -1, 1);
	}
	pthread_mutex_unlock(&sim_lock);
	for (size_t i = 0; i < cap->npools; i++) {
		for (size_t k = 0; k < cap->pools[i].nres; k++) {
			if (cap->pools[i].res[k].free < 0)
				cap->pools[i].res[k].free = 0;
		}
	}
	return 0;
}

static int sim_submit(void *inst, const struct mer_agent_stage *st,
		      char *job_id, size_t n, char *err, size_t errlen)
{
	struct sim *s = inst;
	struct sim_world *w = s->w;
	struct sim_job j = {0};
	double reps = st->replicas > 0 ? (double)st->replicas : 1;
	int unreachable;

	if (!s->have_last) {
		/* Without a probe the sim does not know its pools yet. */
		struct mer_agent_capacity *cap = calloc(1, sizeof(*cap));
		int rv = cap ? sim_read(s, cap, &unreachable, err, errlen)
			     : MER_ENOMEM;
		if (rv) {
			free(cap);
			return rv;
		}
		pthread_mutex_lock(&sim_lock);
		s->last = *cap;
		s->have_last = 1;
		pthread_mutex_unlock(&sim_lock);
		free(cap);
	}
	snprintf(j.stage, sizeof(j.stage), "%s", st->id);
	snprintf(j.pool, sizeof(j.pool), "%s",
		 st->pool[0] ? st->pool : s->last.pools[0].name);
	if (s->last.npools == 0 || !pool_find(&s->last, j.pool)) {
		snprintf(err, errlen, "sim: no pool '%s'", j.pool);
		return MER_ENOTFOUND;
	}
	j.cpus = (st->cpus > 0 ? (double)st->cpus : 1) * reps;
	j.mem = (double)st->memory_mb * reps;
	j.gpus = (double)st->gpus * reps;
	if (st->gpus > 0) {
		const struct mer_agent_pool *p = NULL;
		for (size_t i = 0; i < s->last.npools; i++)
			if (strcmp(s->last.pools[i].name, j.pool) == 0)
				p = &s->last.pools[i];
		if (st->gpu_model[0]) {
			snprintf(j.gpu_kind, sizeof(j.gpu_kind), "gpu:%s",
				 st->gpu_model);
		} else {
			for (size_t k = 0; p && k < p->nres; k++)
				if (strncmp(p->res[k].kind, "gpu:", 4) == 0) {
					snprintf(j.gpu_kind, sizeof(j.gpu_kind),
						 "%s", p->res[k].kind);
					break;
				}
		}
		if (!p || !mer_agent_pool_find(p, j.gpu_kind)) {
			snprintf(err, errlen, "sim: pool '%s' has no %s",
				 j.pool, j.gpu_kind[0] ? j.gpu_kind : "GPUs");
			return MER_ENOTFOUND;
		}
	}
	j.dur_ms = (long long)(st->duration_s * 1000.0 / s->cfg->time_scale);
	j.exit_code = st->exit_code;
	j.state = MER_AGENT_STAGE_PENDING;
	j.submit_ms = now_ms();
	pthread_mutex_lock(&sim_lock);
	if (w->njobs == w->cap) {
		size_t cap = w->cap ? w->cap * 2 : 16;
		struct sim_job *q = realloc(w->jobs, cap * sizeof(*q));
		if (!q) {
			pthread_mutex_unlock(&sim_lock);
			return MER_ENOMEM;
		}
		w->jobs = q;
		w->cap = cap;
	}
	snprintf(j.id, sizeof(j.id), "sim-%lu", ++w->next_id);
	w->jobs[w->njobs++] = j;
	tick(s);
	pthread_mutex_unlock(&sim_lock);
	snprintf(job_id, n, "%s", j.id);
	return 0;
}

static struct sim_job *job_by_id(struct sim_world *w, const char *id)
{
	for (size_t i = 0; i < w->njobs; i++) {
		if (strcmp(w->jobs[i].id, id) == 0)
			return &w->jobs[i];
	}
	return NULL;
}

static int sim_status(void *inst, const char *job_id,
		      struct mer_agent_stage_status *out, char *err,
		      size_t errlen)
{
	struct sim *s = inst;
	struct sim_job *j;
	int rv = 0;

	memset(out, 0, sizeof(*out));
	out->exit_code = -1;
	pthread_mutex_lock(&sim_lock);
	tick(s);
	if (!(j = job_by_id(s->w, job_id))) {
		snprintf(err, errlen, "sim: no job %s", job_id);
		rv = MER_ENOTFOUND;
	} else {
		out->state = j->state;
		if (j->state == MER_AGENT_STAGE_SUCCEEDED ||
		    j->state == MER_AGENT_STAGE_FAILED)
			out->exit_code = j->exit_code;
	}
	pthread_mutex_unlock(&sim_lock);
	return rv;
}

static int sim_find(void *inst, const char *stage_id, char *job_id, size_t n,
		    char *err, size_t errlen)
{
	struct sim *s = inst;
	int rv = MER_ENOTFOUND;

	pthread_mutex_lock(&sim_lock);
	/* The newest job for the stage: an older one was a previous try. */
	for (size_t i = s->w->njobs; i-- > 0;) {
		if (strcmp(s->w->jobs[i].stage, stage_id) == 0) {
			snprintf(job_id, n, "%s", s->w->jobs[i].id);
			rv = 0;
			break;
		}
	}
	pthread_mutex_unlock(&sim_lock);
	if (rv)
		snprintf(err, errlen, "sim: no job for stage %s", stage_id);
	return rv;
}

static int sim_cancel(void *inst, const char *job_id, char *err, size_t errlen)
{
	struct sim *s = inst;
	struct sim_job *j;
	int rv = 0;

	pthread_mutex_lock(&sim_lock);
	tick(s);
	if (!(j = job_by_id(s->w, job_id))) {
		snprintf(err, errlen, "sim: no job %s", job_id);
		rv = MER_ENOTFOUND;
	} else if (!mer_agent_stage_state_final(j->state)) {
		j->state = MER_AGENT_STAGE_CANCELLED;
	}
	pthread_mutex_unlock(&sim_lock);
	return rv;
}

static void sim_close(void *inst)
{
	free(inst);
}

const struct adapter_ops mer_agent_sim_ops = {
    .kind = "sim",
    .open = sim_open,
    .probe = sim_probe,
    .submit = sim_submit,
    .status = sim_status,
    .find = sim_find,
    .cancel = sim_cancel,
    .close = sim_close,
};
