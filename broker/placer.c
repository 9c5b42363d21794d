/*
 * The placer: one thread that places submitted jobs with the engine
 * (policy/place.h) against the federation the broker knows, writes each
 * placement into the job record with a txn guarded by the record's
 * revision, and retries jobs left pending as capacity or policy changes.
 * It also keeps the job-state counts behind /metrics. Dispatch to agents
 * is not here.
 */
#include "broker/broker.h"

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
	if (e) {
		const char *tn =
		    json_string_value(json_object_get(rec, "tenant"));
		e->state = (int8_t)state_index(
		    json_string_value(json_object_get(rec, "state")));
		if (tn)
			e->tenant = tenant_index(b->jobs, tn);
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

static int mutate_placed(void *arg, json_t *rec)
{
	struct place_ctx *c = arg;
	const struct mer_placement *pl = c->pl;
	json_t *stages = json_object_get(rec, "stages");
	const char *st = json_string_value(json_object_get(rec, "state"));

	/* Only a job still pending may be placed: a cancel (or another
	 * broker) that got there first wins. */
	if (!st || strcmp(st, MER_ST_PENDING) != 0)
		return MER_ECANCELED;
	if (json_array_size(stages) != pl->nstages)
		return MER_EPROTO;
	if (pl->complete) {
		for (size_t i = 0; i < pl->nstages; i++) {
			json_t *s = json_array_get(stages, i);
			const struct mer_stage_result *r = &pl->stages[i];
			if (r->site < 0)
				continue;
			json_object_set_new(
			    s, "site",
			    json_string(pl->fed->sites[r->site].name));
			json_object_set_new(s, "state",
					    json_string(MER_ST_PLACED));
			json_object_set_new(s, "placed_at",
					    json_integer(c->now));
			json_object_del(s, "reason");
		}
		json_object_set_new(rec, "state", json_string(MER_ST_PLACED));
	} else {
		int changed = 0;
		long long created =
		    json_integer_value(json_object_get(rec, "created_at"));
		int timeout = c->pending_timeout_s > 0 &&
			      (double)(c->now - created) > c->pending_timeout_s;
		for (size_t i = 0; i < pl->nstages; i++) {
			json_t *s = json_array_get(stages, i);
			const char *old =
			    json_string_value(json_object_get(s, "reason"));
			const char *note = pl->stages[i].note;
			if (pl->stages[i].status != MER_STAGE_PENDING)
				note = "";
			if (!old || strcmp(old, note) != 0) {
				json_object_set_new(s, "reason",
						    json_string(note));
				changed = 1;
			}
			if (timeout)
				json_object_set_new(s, "state",
						    json_string(MER_ST_FAILED));
		}
		if (timeout) {
			json_object_set_new(rec, "state",
					    json_string(MER_ST_FAILED));
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
 * policy's concurrent-stage quota. GPU quotas need per-model usage, which
 * comes with dispatch. */
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

static void place_one(struct mer_broker *b, struct mer_engine *eng,
		      const struct mer_policy_ref *pr, const long long *usage,
		      size_t nusage, const char *id)
{
	json_t *rec = NULL, *after = NULL;
	struct mer_job *job = NULL;
	struct mer_placement *pl = NULL;
	char err[512];
	double t0 = mono_s();
	int rv;

	if ((rv = mer_store_get(b->store, id, &rec, NULL)) != 0) {
		mer_warn("job not readable", "job=%s err=%s", id,
			 mer_errname(rv));
		return;
	}
	const char *st = json_string_value(json_object_get(rec, "state"));
	if (!st || strcmp(st, MER_ST_PENDING) != 0) {
		mer_placer_note(b, rec);
		goto out;
	}
	rv = mer_job_from_json(json_object_get(rec, "spec"), NULL, &job, err,
			       sizeof(err));
	if (rv) {
		mer_warn("stored job does not parse", "job=%s why=%s", id, err);
		goto out;
	}
	struct mer_usage use = {.concurrent_stages =
				    usage_of(b, usage, nusage, job->tenant)};
	struct mer_place_input in = {
	    .job = job, .usage = &use, .now = (long long)time(NULL)};
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
		if (c.changed && pl->complete) {
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
	mer_placement_free(pl);
	mer_job_free(job);
	json_decref(rec);
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
	rv = mer_broker_fed_get(b, 0, &fr, err, sizeof(err));
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
	for (size_t i = 0; i < n; i++)
		place_one(b, eng, pr, usage, nusage, ids[i]);
	free(usage);
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
	    (strcmp(st, MER_ST_PLACED) == 0 || strcmp(st, MER_ST_RUNNING) == 0))
		mer_dispatch_job(r->b,
				 json_string_value(json_object_get(rec, "id")));
	if (st && strcmp(st, MER_ST_PENDING) == 0) {
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
				if (e->id[0] && e->state == 0) {
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
}

void mer_placer_free_table(struct mer_broker *b)
{
	if (b->jobs) {
		free(b->jobs->e);
		free(b->jobs->tenants);
		free(b->jobs);
		b->jobs = NULL;
	}
}
